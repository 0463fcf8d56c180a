#!/usr/bin/env bash
# The predictive-coding variants against backprop on mlp_digits and mlp_fmnist: each trained
# with the file's data, seed, optimiser, batch and epochs (mlp_fmnist: EPOCHS, default 3), PC
# in strict mode at T = STEPS (default 20) and eta = RATE (default 0.1) with each variant's
# setting; test accuracy and wall time of the whole run. Writes docs/variants.md and copies it
# into the book (docs/book/src/variants.md). Fashion-MNIST comes from `apt-get install
# dataset-fashion-mnist`.
# In a variant's flags, `steps=N` replaces T and `lr*=F` scales the file's learning rate (the
# incremental schedule takes T optimiser steps per batch: its rate is divided by T = 20).
set -euo pipefail
cd "$(dirname "$0")/.."
pcg=${PCG:-target/release/pcg}
[ -n "${PCG:-}" ] || cargo build --release --quiet
steps=${STEPS:-20}
rate=${RATE:-0.1}
epochs=${EPOCHS:-3}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

# label : flags
variants=(
  "BP:--method bp"
  "PC strict:--method pc --mode strict"
  "PC strict, momentum 0.5:--method pc --mode strict --momentum 0.5"
  "PC strict, nudge(0.1):--method pc --mode strict --target nudge(0.1)"
  "PC strict, centered(0.1):--method pc --mode strict --target centered(0.1)"
  "PC strict, incremental (lr ÷ T):--method pc --mode strict --schedule incremental lr*=0.05"
  "PC strict, tol 1e-6 (at most 500 steps):--method pc --mode strict --relax-tol 1e-6 steps=500"
  "PC fixed (converges to BP):--method pc --mode fixed"
)
{
  echo "Made by \`scripts/variants.sh\` with the \`jit\` backend on $(nproc) cores of $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1). PC: T = $steps relaxation steps of η = $rate per batch; every row the file's data, seed, optimiser and batch (mlp_fmnist: $epochs epochs). Test accuracy after the last epoch; time of the whole run, evaluation included."
  echo
  echo "| variant | mlp_digits acc | time | mlp_fmnist acc | time |"
  echo "|---|---|---|---|---|"
  for spec in "${variants[@]}"; do
    label=${spec%%:*}
    read -r -a words <<<"${spec#*:}"
    flags=() t=$steps scale=
    for w in "${words[@]}"; do
      case $w in
        steps=*) t=${w#steps=} ;;
        lr\*=*) scale=${w#lr\*=} ;;
        *) flags+=("$w") ;;
      esac
    done
    cells=()
    for model in mlp_digits mlp_fmnist; do
      extra=()
      [ "$model" = mlp_fmnist ] && extra=(--epochs "$epochs")
      if [ -n "$scale" ]; then
        lr=$(sed -n 's/.*optimizer *= *[a-z]*(lr *= *\([0-9.e-]*\).*/\1/p' "examples/$model.pcg")
        extra+=(--lr "$(python3 -c "print($lr * $scale)")")
      fi
      out=$("$pcg" run "examples/$model.pcg" "${flags[@]}" --steps "$t" --rate "$rate" \
        "${extra[@]}")
      line=$(tail -n 1 <<<"$out")
      echo "$label $model: $line" >&2
      # The mean steps run, where a tolerance stops the relaxation (the last epoch's).
      ran=$(field relaxation_steps "$(tail -n 2 <<<"$out" | head -n 1)")
      time="$(field seconds "$line") s${ran:+ ($ran steps)}"
      cells+=("$(field test_acc "$line")" "$time")
    done
    echo "| $label | ${cells[0]} | ${cells[1]} | ${cells[2]} | ${cells[3]} |"
  done
} > docs/variants.md
cat docs/variants.md
python3 scripts/book_tables.py
