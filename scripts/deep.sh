#!/usr/bin/env bash
# Standard PC at depth: each deep model trained by backprop, by strict PC (standard PC, its
# value units relaxed) and by error-based PC (ePC, its errors relaxed), the same file and
# epochs for all three — resnet_deep's architecture at 64 and 128 residual blocks
# (examples/resnet128_spc.pcg, and the same at 64 blocks), the 128-block net in muPC's
# parameterisation (benches/deep/resnet128_mupc.pcg: strict PC as muPC trains it), the character transformer
# (examples/transformer_spc.pcg) and vgg_fmnist. Writes the table docs/deep.md (copied into the
# book by scripts/book_tables.py), learning curves docs/book/src/figures/deep_<model>.svg
# (`pcg plot`), and, with numpy and matplotlib, docs/book/src/figures/deep_blocks.png: each
# residual block's update against backprop's gradient at the initial parameters
# (scripts/deep_blocks.py).
#
#   scripts/deep.sh [resnet64 resnet128 mupc transformer vgg blocks table]   (default: all; ~1.5 hours on 2 cores)
#
# Settings: the strict-family runs nudge the loss (beta = 0.1). Residual nets: 20 relaxation
# steps at rate 0.1 (the file's). Transformer: ePC 10 steps at rate 0.1 (the file's); strict
# 20 steps at rate 0.01 (0.02 and above diverge). VGG (whose file trains in exact mode):
# 10 steps at rate 0.1 for both.
set -euo pipefail
cd "$(dirname "$0")/.."
pcg=${PCG:-target/release/pcg}
python=${PYTHON:-python3}
[ -n "${PCG:-}" ] || cargo build --release --quiet
out=${OUT:-target/deep}
figures=docs/book/src/figures
mkdir -p "$out"
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(resnet64 resnet128 mupc transformer vgg blocks)
sed 's/^const L = 128/const L = 64/; s/^const S = 0.0884/const S = 0.125/' \
    examples/resnet128_spc.pcg > "$out/resnet64_spc.pcg"
nudge="nudge(beta = 0.1)"

# run NAME LABEL FILE FLAGS...: trains, keeping the metrics and the final line.
run() {
  local name=$1 label=$2 file=$3
  shift 3
  rm -f "$out/$name.$label.jsonl"
  echo "== $name $label: pcg run $file $*" >&2
  "$pcg" run "$file" --quiet --metrics "$out/$name.$label.jsonl" "$@" 2> "$out/$name.$label.err" |
    tail -n 1 > "$out/$name.$label.final" || true
  cat "$out/$name.$label.final" "$out/$name.$label.err" >&2
}
curves() {
  local name=$1 title=$2
  "$pcg" plot --title "$title" --out "$figures/deep_$name.svg" \
    bp="$out/$name.bp.jsonl" strict="$out/$name.strict.jsonl" epc="$out/$name.epc.jsonl"
}
for part in "${parts[@]}"; do
  case $part in
    resnet64|resnet128)
      file=examples/resnet128_spc.pcg
      [ "$part" = resnet128 ] || file=$out/resnet64_spc.pcg
      run "$part" bp "$file" --method bp
      run "$part" strict "$file" --mode strict
      run "$part" epc "$file"
      curves "$part" "residual MLP, ${part#resnet} blocks, mnist5k"
      ;;
    mupc)
      file=benches/deep/resnet128_mupc.pcg
      run mupc bp "$file" --method bp
      run mupc strict "$file"
      run mupc epc "$file" --mode epc --rate 0.1
      curves mupc "muPC residual MLP, 128 blocks, mnist5k"
      ;;
    transformer)
      run transformer bp examples/transformer_spc.pcg --method bp
      run transformer strict examples/transformer_spc.pcg --mode strict --steps 20 --rate 0.01
      run transformer epc examples/transformer_spc.pcg
      curves transformer "character transformer, Shakespeare"
      ;;
    vgg)
      run vgg bp examples/vgg_fmnist.pcg --method bp
      run vgg strict examples/vgg_fmnist.pcg --mode strict --steps 10 --rate 0.1 --target "$nudge"
      run vgg epc examples/vgg_fmnist.pcg --mode epc --steps 10 --rate 0.1 --target "$nudge"
      curves vgg "VGG, Fashion-MNIST"
      ;;
    blocks)
      PCG=$pcg "$python" scripts/deep_blocks.py "$figures/deep_blocks.png"
      ;;
    table) ;; # only the table, from the runs there are
    *) echo "unknown part $part (resnet64, resnet128, mupc, transformer, vgg, blocks)" >&2; exit 2 ;;
  esac
done

# The table, from every run's final line there is.
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" "$2"; }
{
  echo "Made by \`scripts/deep.sh\` on $(nproc) cores of $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1), other work on the machine; test accuracy (bits per character for the transformer: test loss / ln 2) after the file's epochs, and the wall time of the run."
  echo
  echo "| model | BP | strict PC | ePC | BP s | strict s | ePC s |"
  echo "|---|---|---|---|---|---|---|"
  for name in resnet64 resnet128 mupc transformer vgg; do
    [ -f "$out/$name.bp.final" ] || continue
    row="| $name |"
    secs=""
    for label in bp strict epc; do
      final=$out/$name.$label.final
      if [ ! -f "$final" ]; then row+=" not run |"; secs+=" - |"; continue; fi
      if [ ! -s "$final" ]; then
        if grep -q diverged "$out/$name.$label.err"; then row+=" diverged |"; else row+=" failed |"; fi
        secs+=" - |"
        continue
      fi
      if [ "$name" = transformer ]; then
        row+=" $(awk -v l="$(field test_loss "$final")" 'BEGIN {printf "%.3f bits/char", l / log(2)}') |"
      else
        row+=" $(field test_acc "$final") |"
      fi
      secs+=" $(field seconds "$final") |"
    done
    echo "$row$secs"
  done
} | tee docs/deep.md
python3 scripts/book_tables.py
