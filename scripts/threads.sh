#!/usr/bin/env bash
# --threads 1 against 2 on every example: ms per training step (median) of `pcg bench` with
# the file's settings, by PC and by BP, the two thread counts run alternately REPEAT times
# (default 3) so that load from elsewhere falls on both. Prints one line per configuration
# with the medians over the repeats and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
pcg=${PCG:-target/release/pcg}
repeat=${REPEAT:-3}
[ -n "${PCG:-}" ] || cargo build --release --quiet
ms() { sed -n 's/.*ms_per_step=\([0-9.]*\).*/\1/p'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-22s %-6s %10s %10s %8s\n' model method "1 thread" "2 threads" "1/2"
for file in examples/*.pcg benches/mlp_b1.pcg; do
  iters=20
  case $file in *lstm*|*cnn*) iters=3 ;; esac
  for method in pc bp; do
    one=(); two=()
    for _ in $(seq "$repeat"); do
      one+=("$("$pcg" bench "$file" --method "$method" --iters "$iters" --threads 1 | tail -n 1 | ms)")
      two+=("$("$pcg" bench "$file" --method "$method" --iters "$iters" --threads 2 | tail -n 1 | ms)")
    done
    a=$(printf '%s\n' "${one[@]}" | median)
    b=$(printf '%s\n' "${two[@]}" | median)
    printf '%-22s %-6s %10s %10s %8s\n' "$(basename "$file" .pcg)" "$method" "$a" "$b" \
      "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }')"
  done
done
