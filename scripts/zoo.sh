#!/usr/bin/env bash
# Trains every example by predictive coding (fixed mode, the train block's settings) and by
# backprop, on the same data, seed and optimiser, and writes
#   docs/zoo.md          the results table shown in the book (docs/book/src/results.md)
#   docs/book/src/figures/zoo_curves.svg  PC and BP test curves of the multi-epoch examples in one figure
# Usage: scripts/zoo.sh [--backend jit|interp]
# Fashion-MNIST comes from `apt-get install dataset-fashion-mnist`.
set -euo pipefail
cd "$(dirname "$0")/.."
backend=jit
[ "${1:-}" = "--backend" ] && backend=${2:-jit}
cargo build --release --quiet
pcg=${CARGO_TARGET_DIR:-target}/release/pcg
runs=${CARGO_TARGET_DIR:-target}/zoo
mkdir -p "$runs" docs

# example : extra flags (the LSTM relaxes 200 steps per batch: a part of an epoch)
examples=(
  "mlp_digits:"
  "shared_branches:"
  "rnn_digits:"
  "mlp_fmnist:--epochs 3"
  "cnn_fmnist:--epochs 2"
  "lstm_shakespeare:--epochs 1 --max-batches 60"
)

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

{
  echo "| example | data | settings | PC (fixed) | PC time | BP | BP time |"
  echo "|---|---|---|---|---|---|---|"
} > "$runs/table.md"
curves=()
for spec in "${examples[@]}"; do
  name=${spec%%:*}
  extra=${spec#*:}
  cells=()
  for method in pc bp; do
    # shellcheck disable=SC2086
    line=$("$pcg" run "examples/$name.pcg" --method "$method" --backend "$backend" --quiet \
      --metrics "$runs/$name.$method.jsonl" $extra | tail -n 1)
    echo "$name $method: $line" >&2
    acc=$(field test_acc "$line")
    loss=$(field test_loss "$line")
    if [ -n "$acc" ]; then
      cells+=("acc $acc")
    else
      cells+=("$(awk -v l="$loss" 'BEGIN { printf "%.3f bits/char", l / log(2) }')")
    fi
    cells+=("$(field seconds "$line") s")
    epochs=$(field epochs "$line")
  done
  data=$(sed -n 's|^ *data *= *\(.*\)$|\1|p' "examples/$name.pcg" | sed 's|//.*||; s/ *$//' | head -n 1)
  settings="batch $(sed -n 's/.*batch = \([0-9]*\).*/\1/p' "examples/$name.pcg" | head -n 1), $epochs epoch(s)"
  case "$extra" in *--max-batches*) settings="$settings of ${extra##*--max-batches } batches" ;; esac
  echo "| $name | $data | $settings | ${cells[0]} | ${cells[1]} | ${cells[2]} | ${cells[3]} |" >> "$runs/table.md"
  case "$name" in
    mlp_digits|shared_branches|rnn_digits|mlp_fmnist)
      curves+=("$name pc=$runs/$name.pc.jsonl" "$name bp=$runs/$name.bp.jsonl") ;;
  esac
done

cpu=$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1)
{
  echo "Made by \`scripts/zoo.sh\` with the \`$backend\` backend on $(nproc) cores of $cpu."
  echo "PC: fixed-prediction relaxation with each file's inference block; BP: the same model,"
  echo "data, seed and optimiser. Test accuracy (or bits per character for the LSTM) on the"
  echo "held-out split; times are whole runs, evaluation included."
  echo
  cat "$runs/table.md"
} > docs/zoo.md
"$pcg" plot "${curves[@]}" --title "PC vs BP" --out docs/book/src/figures/zoo_curves.svg
python3 scripts/book_tables.py
cat docs/zoo.md
