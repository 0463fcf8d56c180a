#!/usr/bin/env bash
# How pcg scales with a loop's trip count: compile time, step time, GFLOP/s, the compiled
# step's arena and the process's peak resident memory, for the LSTM (examples/lstm_shakespeare.pcg)
# at sequence lengths S = 50, 200, 500, 1000 (`--dim T=S`: the loop's trips and the data's
# sequence length) and for examples/resnet_deep.pcg at L = 64, 256, 1024 residual blocks
# (`--dim L=...`), by backprop and by the file's predictive coding (fixed mode, T = 200
# relaxation steps for the LSTM; exact for resnet_deep), each with the loop kept as a scan
# (`--loops scan`) and, up to S = 200 / L = 256 (beyond which unrolled compilation takes
# minutes), unrolled (`--loops unroll`); the last column says which the default policy picks.
# resnet_deep's steps take the file's optimiser (Adam; plain SGD at its rate diverges on the
# benchmark's random batch at 1024 blocks).
#
# Usage: scripts/scale.sh [--quick]  (--quick: S = 50, 200 and L = 64, 256 only)
# Prints a markdown table. On 2 cores the full run takes about 15 minutes; run it on an
# otherwise idle machine (the figures are single runs: repeat for the spread).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
PCG="${CARGO_TARGET_DIR:-target}/release/pcg"
THREADS="${THREADS:-2}"
lstm_sizes="50 200 500 1000"
resnet_sizes="64 256 1024"
if [ "${1:-}" = "--quick" ]; then
    lstm_sizes="50 200"
    resnet_sizes="64 256"
fi

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; --threads $THREADS"
echo
echo "| model | size | method | loops | compile (s) | step (ms, median) | GFLOP/step | GFLOP/s | arena | peak RSS | default |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"

# row MODEL-LABEL FILE DIM SIZE METHOD LOOPS ITERS [BENCH-FLAGS...]
row() {
    local label=$1 file=$2 dim=$3 size=$4 method=$5 loops=$6 iters=$7
    shift 7
    local out picked
    picked=$("$PCG" ir "$file" --dim "$dim=$size" | grep -m1 '^// loop' | grep -q ': a scan' && echo scan || echo unroll)
    if ! out=$( { /usr/bin/time -f 'peak_rss_kb=%M' "$PCG" bench "$file" --method "$method" \
        --threads "$THREADS" --iters "$iters" --dim "$dim=$size" --loops "$loops" "$@"; } 2>&1); then
        echo "| $label | $dim=$size | $method | $loops | failed: $(echo "$out" | grep -m1 error) |"
        return
    fi
    local compile median gflop rate arena rss
    compile=$(echo "$out" | sed -n 's/^compiled in \([0-9.]*\) s.*/\1/p')
    median=$(echo "$out" | sed -n 's/.*median \([0-9.]*\) ms over.*/\1/p')
    gflop=$(echo "$out" | sed -n 's/.*; \([0-9.]*\) GFLOP per step.*/\1/p')
    rate=$(echo "$out" | sed -n 's/.*, \([0-9.]*\) GFLOP\/s at the median.*/\1/p')
    arena=$(echo "$out" | sed -n 's/^arena \(.*\) (every buffer.*/\1/p')
    rss=$(echo "$out" | sed -n 's/^peak_rss_kb=//p')
    echo "| $label | $dim=$size | $method | $loops | $compile | $median | $gflop | $rate | $arena | $((rss / 1024)) MiB | $picked |"
}

for s in $lstm_sizes; do
    # Fewer timed steps where a step takes seconds.
    bp_iters=10; pc_iters=3
    [ "$s" -ge 500 ] && bp_iters=5 && pc_iters=2
    row lstm_shakespeare examples/lstm_shakespeare.pcg T "$s" bp scan "$bp_iters"
    row lstm_shakespeare examples/lstm_shakespeare.pcg T "$s" pc scan "$pc_iters"
    if [ "$s" -le 200 ]; then
        row lstm_shakespeare examples/lstm_shakespeare.pcg T "$s" bp unroll "$bp_iters"
        row lstm_shakespeare examples/lstm_shakespeare.pcg T "$s" pc unroll "$pc_iters"
    fi
done
for l in $resnet_sizes; do
    row resnet_deep examples/resnet_deep.pcg L "$l" bp scan 10 --optimizer file
    row resnet_deep examples/resnet_deep.pcg L "$l" pc scan 10 --optimizer file
    if [ "$l" -le 256 ]; then
        row resnet_deep examples/resnet_deep.pcg L "$l" bp unroll 10 --optimizer file
        row resnet_deep examples/resnet_deep.pcg L "$l" pc unroll 10 --optimizer file
    fi
done
