#!/usr/bin/env bash
# The LSTM's backprop step at sequence lengths S (default 50 200 500) by pcg against PyTorch's
# fused torch.nn.LSTM and JAX's lax.scan (benches/peers/peers.py, whose updates
# benches/peers/check.py checks against `pcg grad`), batch 64, vocabulary 73, hidden 64: ROUNDS
# (default 3) alternating rounds per length, so that load from elsewhere falls on all three.
# Prints each round's medians (ms per step) and the ratios PyTorch / pcg, JAX / pcg.
#
# Usage: PYTHON=<python with torch and jax> scripts/lstm_peers.sh [S ...]
set -euo pipefail
cd "$(dirname "$0")/.."
pcg=${PCG:-target/release/pcg}
python=${PYTHON:-python3}
rounds=${ROUNDS:-3}
[ -n "${PCG:-}" ] || cargo build --release --quiet
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(50 200 500)
median_of() { sed -n "s/^$1 bp: .*median \([0-9.]*\) ms.*/\1/p"; }
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
printf '%-6s %-5s %10s %10s %10s %14s %10s\n' S round pcg PyTorch JAX "PyTorch/pcg" "JAX/pcg"
for s in "${sizes[@]}"; do
  for r in $(seq "$rounds"); do
    peers=$("$python" benches/peers/peers.py --model lstm_fixed --sizes "$s,73,64" --batch 64 \
      --libs pytorch,jax --methods bp --iters 10)
    torch=$(echo "$peers" | median_of pytorch)
    jax=$(echo "$peers" | median_of jax)
    ours=$("$pcg" bench examples/lstm_shakespeare.pcg --method bp --dim "T=$s" --iters 10 \
      | sed -n 's/.*ms_per_step=\([0-9.]*\).*/\1/p')
    printf '%-6s %-5s %10.2f %10.2f %10.2f %13.2fx %9.2fx\n' "$s" "$r" "$ours" "$torch" "$jax" \
      "$(echo "$torch / $ours" | bc -l)" "$(echo "$jax / $ours" | bc -l)"
  done
done
