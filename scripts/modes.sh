#!/usr/bin/env bash
# Every example by BP and by PC in its file's mode, strict mode and exact mode: ms per
# training step (`pcg bench`, median of its steps), REPEAT runs of each (default 3) in turn so
# that load from elsewhere falls on all; the median over the runs and their range. Writes
# docs/modes.md and copies it into the book (docs/book/src/performance.md).
# Strict mode uses the file's steps and rate, except where that rate diverges: --rate 0.1
# (cnn_fmnist, conv_autoencoder, lstm_shakespeare, shared_branches), 0.01 with 20 steps
# (transformer).
set -euo pipefail
cd "$(dirname "$0")/.."
pcg=${PCG:-target/release/pcg}
repeat=${REPEAT:-3}
[ -n "${PCG:-}" ] || cargo build --release --quiet
ms() { tail -n 1 | sed -n 's/.*ms_per_step=\([0-9.]*\).*/\1/p'; }
summary() { sort -g | awk '{a[NR]=$1} END {printf "%s (%s–%s)", a[int((NR+1)/2)], a[1], a[NR]}'; }
{
  echo "Made by \`scripts/modes.sh\` on $(nproc) cores of $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1); ms per training step, the median over $repeat runs of each (range in brackets); each example's own batch. Strict mode at the file's steps and rate, except --rate 0.1 for cnn_fmnist, conv_autoencoder, lstm_shakespeare and shared_branches and --rate 0.01 --steps 20 for the transformer (the file's rate diverges)."
  echo
  echo "| example | BP | PC, the file's mode | PC, strict | PC, exact |"
  echo "|---|---|---|---|---|"
  for file in examples/*.pcg; do
    name=$(basename "$file" .pcg)
    iters=10
    case $name in lstm_shakespeare|vgg_fmnist|transformer_shakespeare) iters=3 ;; toy_graph) iters=2000 ;; esac
    strict=(--mode strict)
    case $name in
      cnn_fmnist|conv_autoencoder|lstm_shakespeare|shared_branches) strict+=(--rate 0.1) ;;
      transformer_shakespeare) strict+=(--rate 0.01 --steps 20) ;;
    esac
    configs=("--method bp" "--method pc" "--method pc ${strict[*]}" "--method pc --mode exact")
    runs=("" "" "" "")
    for _ in $(seq "$repeat"); do
      for i in "${!configs[@]}"; do
        # shellcheck disable=SC2086
        runs[i]+="$("$pcg" bench "$file" ${configs[$i]} --iters "$iters" | ms) "
      done
    done
    row="| $name |"
    for i in "${!configs[@]}"; do row+=" $(tr ' ' '\n' <<<"${runs[$i]}" | grep . | summary) |"; done
    echo "$row"
  done
} | tee docs/modes.md
python3 scripts/book_tables.py
