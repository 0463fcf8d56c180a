#!/usr/bin/env bash
# pcg against PyTorch (eager) and JAX (jit) on the same predictive-coding training steps and
# the same backprop steps, in one run, on the CPU with 2 threads:
#   mlp_fmnist        784-256-256-10, batch 64: fixed PC T = 20, BP, strict PC T = 5 and 20
#   mlp_b1            64-256-256-10,  batch 1:  fixed PC T = 100, BP  (per-op overhead dominates)
#   cnn_fmnist        batch 64, strict PC T = 10 (JAX)
#   lstm_shakespeare  batch 64, 50 characters, fixed PC T = 200 at eta = 0.5 (the file's; JAX),
#                     and BP (PyTorch: the fused torch.nn.LSTM; JAX: jax.grad through lax.scan)
# (eta = 0.1 where not said.) First benches/peers/check.py checks every peer's update against
# `pcg grad` on a small instance; a peer that fails is shown as FAIL, not timed. Then prints ms
# per training step (median) side by side and writes the table to benches/peers/results.md.
# The peers need `pip install torch "jax[cpu]" numpy` (torch is large; it is not part of CI).
# PYTHON selects the interpreter (default: python3); PCG a pcg binary to use instead of
# building one; ITERS the timed steps of the small models and of the LSTM's BP (default 50),
# SLOW_ITERS those of cnn_fmnist and lstm_shakespeare's PC (default 3); NO_README=1 skips
# updating the book's table
# (docs/book/src/performance.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-python3}
iters=${ITERS:-50}
slow=${SLOW_ITERS:-3}
interp_iters=$((iters / 5 + 1))
if [ -n "${PCG:-}" ]; then
  pcg=$PCG
else
  cargo build --release --quiet
  pcg=${CARGO_TARGET_DIR:-target}/release/pcg
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "checking the peers against pcg grad ..." >&2
if ! "$python" benches/peers/check.py --pcg "$pcg" --json "$tmp/check.json" >"$tmp/check.log" 2>&1; then
  grep -E '^(FAIL|SKIP)|Error|error' "$tmp/check.log" >&2 || tail -n 20 "$tmp/check.log" >&2
  echo "some peers failed their check: they are shown as FAIL" >&2
fi
grep -E '^(PASS|FAIL|SKIP)' "$tmp/check.log" >&2 || true

ms() { sed -n 's/.*ms_per_step=\([0-9.]*\).*/\1/p'; }
# peer JSON CHECKCASE LIBRARY METHOD: the median ms, FAIL, or n/a.
peer() {
  "$python" - "$@" "$tmp/check.json" <<'EOF'
import json, sys
path, case, lib, method, check = sys.argv[1:6]
try:
    c = json.load(open(check)).get(f"{case} {lib}")
except (OSError, ValueError):
    c = None
try:
    r = json.load(open(path)).get(lib, {"error": "not run"})
except (OSError, ValueError):
    r = {"error": "failed"}
if "error" in r or method not in r:
    print("n/a")
elif c is None or not c.get("pass"):
    print("FAIL")
else:
    print("%.4f" % r[method][1])
EOF
}
ratio() { case "$2" in n/a|FAIL) echo -;; *) awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", b / a }';; esac; }

rows=()
row() { # name method mode batch T jit interp torch jax
  local r="| $1 | $2 | $3 | $4 | $5 | $6 | $7 | $8 | $9 | $(ratio "$6" "$8") | $(ratio "$6" "$9") |"
  echo "$r" >&2
  rows+=("$r")
}

# name : file : peers.py model and arguments : batch : T : rate : mode : check case (pc, bp)
configs=(
  "mlp_fmnist:examples/mlp_fmnist.pcg:mlp --sizes 784,256,256,10:64:20:0.1:fixed:mlp_fmnist pc fixed T=20:mlp_fmnist bp"
  "mlp_b1:benches/mlp_b1.pcg:mlp --sizes 64,256,256,10:1:100:0.1:fixed:mlp_b1 pc fixed T=100:mlp_b1 bp"
  "mlp_fmnist:examples/mlp_fmnist.pcg:mlp_strict --sizes 784,256,256,10:64:5:0.1:strict:mlp_fmnist pc strict T=5:"
  "mlp_fmnist:examples/mlp_fmnist.pcg:mlp_strict --sizes 784,256,256,10:64:20:0.1:strict:mlp_fmnist pc strict T=20:"
  "cnn_fmnist:examples/cnn_fmnist.pcg:cnn_strict:64:10:0.1:strict:cnn_fmnist pc strict T=10:"
  "lstm_shakespeare:examples/lstm_shakespeare.pcg:lstm_fixed --sizes 50,73,64:64:200:0.5:fixed:lstm_shakespeare pc fixed T=200:lstm_shakespeare bp"
)
for config in "${configs[@]}"; do
  IFS=: read -r name file model batch steps rate mode pc_case bp_case <<<"$config"
  methods=pc
  [ -n "$bp_case" ] && methods="pc bp"
  for method in $methods; do
    case $name:$method in cnn_fmnist:*|lstm_shakespeare:pc) n=$slow; warmup=1;; *) n=$iters; warmup=5;; esac
    echo "timing $name $method ($model$([ "$method" = pc ] && echo ", T = $steps")) ..." >&2
    # shellcheck disable=SC2086  # $model carries the peers.py arguments
    "$python" benches/peers/peers.py --model $model --methods "$method" --batch "$batch" --steps "$steps" \
      --rate "$rate" --iters "$n" --warmup "$warmup" --json >"$tmp/peer.json" 2>"$tmp/peer.err" ||
      cat "$tmp/peer.err" >&2
    if [ "$name" = lstm_shakespeare ]; then  # the file's settings: PC fixed, T = 200, eta = 0.5
      # (T=50 is the file's sequence length; bench times random batches, so the data is unread)
      jit=$("$pcg" bench "$file" --method "$method" --threads 2 --batch "$batch" --dim T=50 --iters "$n" |
        tail -n 1 | ms)
      interp=-
    else
      args=(--batch "$batch")
      [ "$method" = pc ] && args+=(--mode "$mode" --inference-steps "$steps" --rate "$rate")
      jit=$("$pcg" bench "$file" --method "$method" --backend jit --threads 2 "${args[@]}" --iters "$n" | tail -n 1 | ms)
      if [ "$name" = cnn_fmnist ]; then
        interp=-  # the interpreter is too slow here
      else
        interp=$("$pcg" bench "$file" --method "$method" --backend interp "${args[@]}" --iters "$interp_iters" | tail -n 1 | ms)
      fi
    fi
    case=$pc_case
    [ "$method" = bp ] && case=$bp_case
    torch=$(peer "$tmp/peer.json" "$case" pytorch "$method")
    jax=$(peer "$tmp/peer.json" "$case" jax "$method")
    row "$name" "$method" "$([ "$method" = pc ] && echo "$mode" || echo -)" "$batch" \
      "$([ "$method" = pc ] && echo "$steps" || echo -)" "$jit" "$interp" "$torch" "$jax"
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
  echo "Made by \`benches/peers/run.sh\` on $(nproc) cores of $cpu ($versions); ms per training step, median of $iters steps (cnn_fmnist and lstm_shakespeare's PC: $slow; the interpreter: $interp_iters). Every peer's update is first checked against \`pcg grad\` on a small instance (\`benches/peers/check.py\`, relative error ≤ 1e-4 per parameter); FAIL marks a peer that differs, n/a one that does not exist. η = 0.1, except lstm_shakespeare: the file's fixed mode, T = 200, η = 0.5; its BP peer in PyTorch is the fused \`torch.nn.LSTM\`, in JAX \`jax.grad\` through a \`lax.scan\` of the cell."
  echo
  echo "| model | method | mode | batch | T | pcg jit | pcg interp | PyTorch | JAX | PyTorch / pcg | JAX / pcg |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee benches/peers/results.md
[ -n "${NO_README:-}" ] || python3 scripts/book_tables.py
