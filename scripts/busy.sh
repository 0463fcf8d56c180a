#!/usr/bin/env bash
# Threads under load: the default thread count against `--threads 1` while a busy loop holds
# the machine's last core. For each configuration, ms per training step (median of `pcg
# bench`) of the two, run alternately REPEAT times (default 3) so that the load falls on both;
# prints each round, then the medians over the rounds and their ratio, and how many steps the
# default run put on one thread (see src/jit/pace.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
pcg=${PCG:-target/release/pcg}
repeat=${REPEAT:-3}
[ -n "${PCG:-}" ] || cargo build --release --quiet
last=$(($(nproc) - 1))
taskset -c "$last" sh -c 'while :; do :; done' &
busy=$!
trap 'kill $busy' EXIT
sleep 0.5
ms() { sed -n 's/.*ms_per_step=\([0-9.]*\).*/\1/p'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
configs=(
  "mlp_fmnist strict T=5 b128|examples/mlp_fmnist.pcg --method pc --mode strict --steps 5 --rate 0.1 --batch 128 --iters 50"
  "lstm BP S=500|examples/lstm_shakespeare.pcg --method bp --dim T=500 --iters 20"
)
echo "busy loop on core $last; ms per step, default threads against --threads 1"
for config in "${configs[@]}"; do
  name=${config%%|*}
  read -r -a args <<<"${config#*|}"
  def=(); one=()
  for r in $(seq "$repeat"); do
    out=$("$pcg" bench "${args[@]}")
    def+=("$(tail -n 1 <<<"$out" | ms)")
    alone=$(sed -n 's/^threads: \([0-9]* of [0-9]*\) steps.*/\1/p' <<<"$out")
    one+=("$("$pcg" bench "${args[@]}" --threads 1 | tail -n 1 | ms)")
    echo "  $name round $r: default ${def[-1]} (${alone:-0 of all} steps on one thread), one thread ${one[-1]}"
  done
  a=$(printf '%s\n' "${def[@]}" | median)
  b=$(printf '%s\n' "${one[@]}" | median)
  printf '%-28s default %9s  one thread %9s  default/one %s\n' "$name" "$a" "$b" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }')"
done
