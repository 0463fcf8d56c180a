#!/usr/bin/env bash
# Peak resident memory of training the benchmark model (examples/mlp_fmnist.pcg, one epoch of
# Fashion-MNIST by predictive coding) must stay under 200 MB: the images are kept as bytes and
# converted per batch. Needs `apt-get install dataset-fashion-mnist`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
limit_kb=$((200 * 1024))
report=$(/usr/bin/time -v "${CARGO_TARGET_DIR:-target}"/release/pcg run examples/mlp_fmnist.pcg --method pc --quiet "$@" 2>&1)
echo "$report" | grep -E '^final'
peak_kb=$(echo "$report" | sed -n 's/.*Maximum resident set size (kbytes): //p')
echo "peak resident memory: $((peak_kb / 1024)) MB (limit $((limit_kb / 1024)) MB)"
[ "$peak_kb" -le "$limit_kb" ]
