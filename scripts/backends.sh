#!/usr/bin/env bash
# The JIT against the interpreter on every example: ms per training step (median), PC with the
# file's inference settings and BP, on seeded random data of the model's shapes.
# Writes docs/backends.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
pcg=${CARGO_TARGET_DIR:-target}/release/pcg
ms() { tail -n 1 | sed -n 's/.*ms_per_step=\([0-9.]*\).*/\1/p'; }
{
  echo "Made by \`scripts/backends.sh\` on $(nproc) cores of $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1); ms per training step (median), each example's own batch and inference settings."
  echo
  echo "| example | method | jit | interp | interp / jit |"
  echo "|---|---|---|---|---|"
  for file in examples/*.pcg; do
    name=$(basename "$file" .pcg)
    for method in pc bp; do
      iters=20
      case "$name" in lstm_shakespeare|cnn_fmnist) iters=5 ;; esac
      jit=$("$pcg" bench "$file" --method "$method" --backend jit --iters "$iters" | ms)
      interp=$("$pcg" bench "$file" --method "$method" --backend interp --iters "$iters" | ms)
      echo "| $name | $method | $jit | $interp | $(awk -v a="$jit" -v b="$interp" 'BEGIN { printf "%.1f×", b / a }') |"
    done
  done
} | tee docs/backends.md
python3 scripts/book_tables.py
