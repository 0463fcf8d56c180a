#!/usr/bin/env bash
# Exact-mode PC against backprop on the LSTM kept as a scan, at the sequence lengths given
# (default 200 500): `pcg bench examples/lstm_shakespeare.pcg --dim T=S` by each, run
# alternately ROUNDS times (default 4) so that load from elsewhere falls on both. Prints each
# round's fastest and median step of each and the ratios exact / BP.
set -euo pipefail
cd "$(dirname "$0")/.."
pcg=${PCG:-target/release/pcg}
rounds=${ROUNDS:-4}
[ -n "${PCG:-}" ] || cargo build --release --quiet
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(200 500)
file=examples/lstm_shakespeare.pcg
echo "$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1), $(nproc) cores; ms per step (fastest / median of 10)"
for s in "${sizes[@]}"; do
  for r in $(seq "$rounds"); do
    bp=$("$pcg" bench "$file" --method bp --dim "T=$s" --iters 10)
    exact=$("$pcg" bench "$file" --method pc --mode exact --dim "T=$s" --iters 10)
    read -r b_min b_med <<<"$(sed -n 's/^min \([0-9.]*\) ms, median \([0-9.]*\) ms.*/\1 \2/p' <<<"$bp")"
    read -r e_min e_med <<<"$(sed -n 's/^min \([0-9.]*\) ms, median \([0-9.]*\) ms.*/\1 \2/p' <<<"$exact")"
    awk -v s="$s" -v r="$r" -v bm="$b_min" -v bd="$b_med" -v em="$e_min" -v ed="$e_med" 'BEGIN {
      printf "S = %s round %s: BP %.1f / %.1f, exact %.1f / %.1f; exact / BP %.2fx fastest, %.2fx median\n",
        s, r, bm, bd, em, ed, em / bm, ed / bd }'
  done
done
