#!/usr/bin/env bash
# The LSTM's backprop step at sequence lengths S (default 50 200 500) by pcg against PyTorch's
# fused torch.nn.LSTM and JAX's lax.scan (benches/peers/peers.py, whose updates
# benches/peers/check.py checks against `pcg grad`), batch 64, vocabulary 73, hidden 64: ROUNDS
# (default 3) alternating rounds per length, so that load from elsewhere falls on all three.
# Prints each round's medians (ms per step) and the ratios PyTorch / pcg, JAX / pcg.
# METHOD=pc times the file's fixed-mode relaxation instead (T = 200 steps at eta = 0.5, 3 steps
# a round) against JAX's vectorised relaxation (benches/peers/peers.py lstm_fixed; PyTorch has
# none: n/a).
#
# Usage: PYTHON=<python with torch and jax> [METHOD=pc] scripts/lstm_peers.sh [S ...]
set -euo pipefail
cd "$(dirname "$0")/.."
pcg=${PCG:-target/release/pcg}
python=${PYTHON:-python3}
rounds=${ROUNDS:-3}
[ -n "${PCG:-}" ] || cargo build --release --quiet
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(50 200 500)
method=${METHOD:-bp}
case $method in
  bp) libs=pytorch,jax; iters=10; peer_args=() ;;
  pc) libs=jax; iters=3; peer_args=(--steps 200 --rate 0.5 --warmup 1) ;;
  *) echo "METHOD must be bp or pc" >&2; exit 2 ;;
esac
median_of() { sed -n "s/^$1 $method: .*median \([0-9.]*\) ms.*/\1/p"; }
ratio() { if [ -n "$1" ]; then printf '%13.2fx' "$(echo "$1 / $2" | bc -l)"; else printf '%14s' n/a; fi; }
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
printf '%-6s %-5s %10s %10s %10s %14s %10s\n' S round pcg PyTorch JAX "PyTorch/pcg" "JAX/pcg"
for s in "${sizes[@]}"; do
  for r in $(seq "$rounds"); do
    peers=$("$python" benches/peers/peers.py --model lstm_fixed --sizes "$s,73,64" --batch 64 \
      --libs "$libs" --methods "$method" --iters "$iters" "${peer_args[@]}")
    torch=$(echo "$peers" | median_of pytorch)
    jax=$(echo "$peers" | median_of jax)
    ours=$("$pcg" bench examples/lstm_shakespeare.pcg --method "$method" --dim "T=$s" \
      --iters "$iters" | sed -n 's/.*ms_per_step=\([0-9.]*\).*/\1/p')
    printf '%-6s %-5s %10.2f %10s %10.2f %s %s\n' "$s" "$r" "$ours" "${torch:-n/a}" "$jax" \
      "$(ratio "$torch" "$ours")" "$(ratio "$jax" "$ours" | sed 's/^ //')"
  done
done
