#!/usr/bin/env bash
# pcg against PyTorch (eager) and JAX (jit) on the same fixed-mode predictive-coding training
# step and the same backprop step, in one run, on the CPU with 2 threads:
#   mlp_fmnist  784-256-256-10, batch 64, T = 20, eta = 0.1
#   mlp_b1      64-256-256-10,  batch 1,  T = 100, eta = 0.1  (per-op overhead dominates)
# Prints ms per training step (median) side by side and writes the table to
# benches/peers/results.md. The peers need `pip install torch "jax[cpu]" numpy` (torch is
# large; it is not part of CI). PYTHON selects the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-python3}
iters=${ITERS:-50}
cargo build --release --quiet
pcg=${CARGO_TARGET_DIR:-target}/release/pcg

ms() { sed -n 's/.*ms_per_step=\([0-9.]*\).*/\1/p'; }
peer() { # sizes batch steps method library
  "$python" benches/peers/peers.py --sizes "$1" --batch "$2" --steps "$3" --iters "$iters" --json |
    "$python" -c "import json,sys; r=json.load(sys.stdin)['$5']; print('n/a' if 'error' in r else '%.4f' % r['$4'][1])"
}

rows=()
for config in "mlp_fmnist:examples/mlp_fmnist.pcg:784,256,256,10:64:20" "mlp_b1:benches/mlp_b1.pcg:64,256,256,10:1:100"; do
  IFS=: read -r name file sizes batch steps <<<"$config"
  for method in pc bp; do
    jit=$("$pcg" bench "$file" --method "$method" --backend jit --batch "$batch" --inference-steps "$steps" --rate 0.1 --iters "$iters" | tail -n 1 | ms)
    interp=$("$pcg" bench "$file" --method "$method" --backend interp --batch "$batch" --inference-steps "$steps" --rate 0.1 --iters "$((iters / 5 + 1))" | tail -n 1 | ms)
    torch=$(peer "$sizes" "$batch" "$steps" "$method" pytorch)
    jax=$(peer "$sizes" "$batch" "$steps" "$method" jax)
    ratio() { [ "$2" = n/a ] && echo n/a || awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", b / a }'; }
    rows+=("| $name | $method | $batch | $([ "$method" = pc ] && echo "$steps" || echo -) | $jit | $interp | $torch | $jax | $(ratio "$jit" "$torch") | $(ratio "$jit" "$jax") |")
  done
done

cpu=$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1)
versions=$("$python" -c "
import importlib
out = []
for m in ('torch', 'jax'):
    try: out.append(m + ' ' + importlib.import_module(m).__version__)
    except ImportError: out.append(m + ' not installed')
print(', '.join(out))")
{
  echo "Made by \`benches/peers/run.sh\` on $(nproc) cores of $cpu ($versions); ms per training step, median of $iters steps (the interpreter: $((iters / 5 + 1)))."
  echo
  echo "| model | method | batch | T | pcg jit | pcg interp | PyTorch | JAX | PyTorch / pcg | JAX / pcg |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee benches/peers/results.md
python3 scripts/readme_tables.py
