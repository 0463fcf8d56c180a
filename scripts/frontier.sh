#!/usr/bin/env bash
# The frontier models (examples/transformer_shakespeare.pcg, resnet_deep.pcg, vgg_fmnist.pcg),
# each trained by backprop and by predictive coding — exact mode, fixed mode converged in two
# ways (rate 1 with T past the graph's depth: one reverse sweep; rate 0.5: the closed form) and
# strict mode — on the same data, seed and optimiser, for the train block's epochs (strict mode
# for fewer batches: its relaxation is simulated, T steps per batch). Each PC row carries
# `pcg gradcheck`'s max_rel_err at its settings and its step time against BP's (`pcg bench`).
# Writes
#   docs/frontier.md          the table shown in the book (docs/book/src/results.md)
#   docs/book/src/figures/frontier_curves.svg  test curves of BP and the PC rows run for whole epochs
# Usage: scripts/frontier.sh [BATCHES]   (with BATCHES, every run stops after that many batches:
#                                         a quick check; the docs are then left alone)
# Fashion-MNIST comes from `apt-get install dataset-fashion-mnist`.
set -euo pipefail
cd "$(dirname "$0")/.."
cap=${1:-}
cargo build --release --quiet
pcg=${CARGO_TARGET_DIR:-target}/release/pcg
runs=${CARGO_TARGET_DIR:-target}/frontier
mkdir -p "$runs" docs

# example : fixed mode, rate 1 : fixed mode, rate 0.5 : strict mode : strict mode's batches
# (one epoch of that many; empty: the train block's epochs)
examples=(
  "transformer_shakespeare:--steps 23 --rate 1:--steps 60 --rate 0.5:--steps 30 --rate 0.01:100"
  "resnet_deep:--steps 66 --rate 1:--steps 200 --rate 0.5:--steps 100 --rate 0.1:"
  "vgg_fmnist:--steps 12 --rate 1:--steps 30 --rate 0.5:--steps 20 --rate 0.1:200"
)

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

table=$runs/table.md
{
  echo "| example | method | settings | batches | test result | test loss | seconds | gradcheck max_rel_err | step vs BP |"
  echo "|---|---|---|---|---|---|---|---|---|"
} > "$table"
curves=()
for spec in "${examples[@]}"; do
  IFS=: read -r name fixed1 fixed2 strict strict_batches <<<"$spec"
  file=examples/$name.pcg
  bp_ms=$(field ms_per_step "$("$pcg" bench "$file" --method bp --iters 10 | tail -1)")
  for run in "bp:" "pc:--mode exact" "pc:--mode fixed $fixed1" "pc:--mode fixed $fixed2" "pc:--mode strict $strict"; do
    method=${run%%:*}
    flags=${run#*:}
    limit=()
    iters=10
    case "$flags" in *strict*) iters=3 ;; esac
    case "$flags:$strict_batches" in *strict*:[0-9]*) limit=(--epochs 1 --max-batches "$strict_batches") ;; esac
    [ -n "$cap" ] && limit=(--epochs 1 --max-batches "$cap")
    tag=$name.$method$(tr -c 'a-z0-9.\n' _ <<<"${flags:-}" | tr -s _)
    # shellcheck disable=SC2086
    line=$("$pcg" run "$file" --method "$method" $flags "${limit[@]}" --quiet \
      --metrics "$runs/$tag.jsonl.new" 2>&1 | tail -1) || true
    mv "$runs/$tag.jsonl.new" "$runs/$tag.jsonl" 2>/dev/null || true
    echo "$name $method $flags: $line" >&2
    if [[ $line != final* ]]; then
      line="final test_loss=diverged test_acc=- seconds=-"
    fi
    err=- ratio=1.00
    if [ "$method" = pc ]; then
      # shellcheck disable=SC2086
      check=$("$pcg" gradcheck "$file" --batch 4 $flags --tol 1 2>&1 | tail -1 || true)
      err=$(field max_rel_err " $check")
      # shellcheck disable=SC2086
      ms=$(field ms_per_step "$("$pcg" bench "$file" --method pc $flags --iters $iters 2>&1 | tail -1 || true)")
      ratio=$(awk -v a="${ms:-nan}" -v b="$bp_ms" 'BEGIN { printf "%.2f", a / b }')
    fi
    loss=$(field test_loss "$line")
    acc=$(field test_acc "$line")
    # The transformer's loss is in nats per character; its accuracy is per position.
    case "$name:$loss" in
      transformer*:[0-9]*) result=$(awk -v l="$loss" 'BEGIN { printf "%.3f bits/char", l / log(2) }') ;;
      *) result="acc $acc" ;;
    esac
    batches=$(awk -v f="$runs/$tag.jsonl" 'END { print NR }' "$runs/$tag.jsonl" 2>/dev/null)
    if [ ${#limit[@]} -gt 0 ]; then
      batches="${limit[3]}"
    else
      batches="$batches epoch(s)"
    fi
    echo "| $name | $method | ${flags:-} | $batches | $result | $loss | $(field seconds "$line") | $err | $ratio× |" >> "$table"
    if [ ${#limit[@]} -eq 0 ]; then
      short=${name%%_*}
      case "$flags" in
        "") curves+=("$short bp=$runs/$tag.jsonl") ;;
        *"rate 0.5"*) curves+=("$short pc fixed=$runs/$tag.jsonl") ;;
      esac
    fi
  done
done

cat "$table"
[ -n "$cap" ] && exit 0
cpu=$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1)
{
  echo "Made by \`scripts/frontier.sh\` on $(nproc) cores of $cpu (the \`jit\` backend)."
  echo "Each example's train block gives the data, seed, optimiser and epochs; strict mode runs"
  echo "for the batches shown. Test result: accuracy, or bits per character on the held-out 10%"
  echo "of the text (its loss is in nats per character); seconds are whole runs, evaluation"
  echo "included. max_rel_err: \`pcg gradcheck --batch 4\` at the row's settings (PC's update"
  echo "against BP's gradient, at the initial parameters). Step vs BP: \`pcg bench\` medians."
  echo
  cat "$table"
} > docs/frontier.md
"$pcg" plot "${curves[@]}" --title "frontier models: PC (fixed, rate 0.5) vs BP" --out docs/book/src/figures/frontier_curves.svg
python3 scripts/book_tables.py
