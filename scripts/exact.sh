#!/usr/bin/env bash
# Exact-mode PC against backprop on every example: ms per training step (median) of
# `pcg bench FILE --method pc --mode exact` and of `--method bp`, the two run alternately
# REPEAT times (default 3) so that load from elsewhere falls on both; the medians over the
# repeats and their ratio. Writes docs/exact.md and copies it into the book (docs/book/src/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
pcg=${PCG:-target/release/pcg}
repeat=${REPEAT:-3}
[ -n "${PCG:-}" ] || cargo build --release --quiet
ms() { tail -n 1 | sed -n 's/.*ms_per_step=\([0-9.]*\).*/\1/p'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
{
  echo "Made by \`scripts/exact.sh\` on $(nproc) cores of $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1); ms per training step, median over $repeat alternating runs of each; each example's own batch."
  echo
  echo "| example | PC, exact mode | BP | exact / BP | how the errors are evaluated |"
  echo "|---|---|---|---|---|"
  for file in examples/*.pcg; do
    iters=20
    # Sub-microsecond steps: many more, or the median is mostly the timer's.
    case $file in *lstm*|*cnn*) iters=5 ;; *toy_graph*) iters=2000 ;; esac
    exact=(); bp=()
    for _ in $(seq "$repeat"); do
      exact+=("$("$pcg" bench "$file" --method pc --mode exact --iters "$iters" | ms)")
      bp+=("$("$pcg" bench "$file" --method bp --iters "$iters" | ms)")
    done
    a=$(printf '%s\n' "${exact[@]}" | median)
    b=$(printf '%s\n' "${bp[@]}" | median)
    how=$("$pcg" ir "$file" --stage pc --mode exact 2>/dev/null | sed -n 's,^// final state: ,,p' | head -n 1)
    echo "| $(basename "$file" .pcg) | $a | $b | $(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f×", a / b }') | $how |"
  done
} | tee docs/exact.md
python3 scripts/book_tables.py
