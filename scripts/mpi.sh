#!/usr/bin/env bash
# One process against two MPI ranks (one thread each) on this machine: ms per training step
# (median) of `pcg bench` at the file's global batch, for mlp_fmnist and cnn_fmnist by PC
# (the file's settings, and strict mode) and by BP. Each rank relaxes half of every batch and
# the ranks sum their updates in one all-reduce per step. The two are run alternately REPEAT
# times (default 3) so that load from elsewhere falls on both; prints the medians and the
# speed-up with its range over the repeats. Needs a pcg built with `--features mpi` and Open
# MPI's mpirun.
set -euo pipefail
cd "$(dirname "$0")/.."
pcg=${PCG:-target/release/pcg}
repeat=${REPEAT:-3}
[ -n "${PCG:-}" ] || cargo build --release --quiet --features mpi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ms() { sed -n 's/.*ms_per_step=\([0-9.]*\).*/\1/p'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Markdown rows, as the book (docs/book/src/distributed.md) shows them.
echo "| model | method | 1 process, ms | 2 ranks, ms | speed-up | range |"
echo "| --- | --- | --- | --- | --- | --- |"
run() {
  local file=$1 label=$2 iters=$3; shift 3
  local one=() two=() ratios=()
  for _ in $(seq "$repeat"); do
    local a b
    a=$("$pcg" bench "$file" --iters "$iters" --threads 1 "$@" | tail -n 1 | ms)
    b=$(mpirun -n 2 --oversubscribe "$pcg" bench "$file" --iters "$iters" --threads 1 "$@" | tail -n 1 | ms)
    one+=("$a"); two+=("$b")
    ratios+=("$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }')")
  done
  local a b lo hi
  a=$(printf '%s\n' "${one[@]}" | median)
  b=$(printf '%s\n' "${two[@]}" | median)
  lo=$(printf '%s\n' "${ratios[@]}" | sort -g | head -n 1)
  hi=$(printf '%s\n' "${ratios[@]}" | sort -g | tail -n 1)
  printf '| %s | %s | %s | %s | %s× | %s–%s |\n' "$(basename "$file" .pcg)" "$label" "$a" "$b" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }')" "$lo" "$hi"
}
run examples/mlp_fmnist.pcg "pc (file: fixed)" 50
run examples/mlp_fmnist.pcg "pc strict T=20 rate 0.1" 50 --mode strict --steps 20 --rate 0.1
run examples/mlp_fmnist.pcg "bp" 50 --method bp
run examples/cnn_fmnist.pcg "pc (file: fixed T=50)" 5
run examples/cnn_fmnist.pcg "pc strict T=10 rate 0.1" 5 --mode strict --steps 10 --rate 0.1
run examples/cnn_fmnist.pcg "bp" 10 --method bp
