#!/usr/bin/env bash
# The frontier models (examples/transformer_shakespeare.pcg, resnet_deep.pcg, vgg_fmnist.pcg),
# each trained by backprop and by predictive coding in exact, fixed and strict mode on the same
# data, seed, optimiser and number of batches, with `pcg gradcheck`'s max_rel_err at each PC
# setting and the PC-to-BP step-time ratio from `pcg bench`. Prints a markdown table.
# Usage: scripts/frontier.sh [BATCHES]   (batches per run; default 300)
# Fashion-MNIST comes from `apt-get install dataset-fashion-mnist`.
set -euo pipefail
cd "$(dirname "$0")/.."
batches=${1:-300}
cargo build --release --quiet
pcg=${CARGO_TARGET_DIR:-target}/release/pcg

# example : fixed-mode settings (T past the graph's depth) : strict-mode settings
examples=(
  "transformer_shakespeare:--steps 30 --rate 0.5:--steps 30 --rate 0.05"
  "resnet_deep:--steps 80 --rate 0.5:--steps 80 --rate 0.1"
  "vgg_fmnist:--steps 20 --rate 0.5:--steps 20 --rate 0.1"
)

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

echo "Made by \`scripts/frontier.sh $batches\` on $(nproc) cores; $batches batches per run, the train blocks' optimisers and seeds."
echo
echo "| example | method | settings | test loss | test acc | seconds | gradcheck max_rel_err | step vs BP |"
echo "|---|---|---|---|---|---|---|---|"
for spec in "${examples[@]}"; do
  IFS=: read -r name fixed strict <<<"$spec"
  file=examples/$name.pcg
  bp_ms=$(field ms_per_step "$("$pcg" bench "$file" --method bp --iters 10 | tail -1)")
  for run in "bp:" "pc:--mode exact" "pc:--mode fixed $fixed" "pc:--mode strict $strict"; do
    method=${run%%:*}
    flags=${run#*:}
    # shellcheck disable=SC2086
    line=$("$pcg" run "$file" --method "$method" $flags --epochs 1 --max-batches "$batches" --quiet 2>&1 | tail -1) || true
    if [[ $line != final* ]]; then
      line="final test_loss=diverged test_acc=- seconds=-"
    fi
    err=- ratio=1.00
    if [ "$method" = pc ]; then
      # shellcheck disable=SC2086
      check=$("$pcg" gradcheck "$file" --batch 4 $flags --tol 1 2>&1 | tail -1 || true)
      err=$(field max_rel_err " $check")
      # shellcheck disable=SC2086
      ms=$(field ms_per_step "$("$pcg" bench "$file" --method pc $flags --iters 10 2>&1 | tail -1 || true)")
      ratio=$(awk -v a="${ms:-nan}" -v b="$bp_ms" 'BEGIN { printf "%.2f", a / b }')
    fi
    echo "| $name | $method | ${flags:-} | $(field test_loss "$line") | $(field test_acc "$line") | $(field seconds "$line") | $err | $ratio× |"
  done
done
