#!/usr/bin/env bash
# The convolutional autoencoder (examples/conv_autoencoder.pcg, no target: the loss compares
# the reconstruction with the input) trained by backprop and by predictive coding in three
# settings, each with the file's data (mnist5k, embedded), seed, optimiser, batch and epochs.
# Writes docs/autoencoder.md (a table: test reconstruction loss and time of each run, and the
# gradcheck distance of each PC setting from BP's gradient on a batch of 4) and
# docs/autoencoder_curves.svg (the runs' test curves, drawn by `pcg plot`), and copies the
# table into the book's results chapter. About 2 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
pcg=${PCG:-target/release/pcg}
[ -n "${PCG:-}" ] || cargo build --release --quiet
file=examples/conv_autoencoder.pcg
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

# label : key : flags
settings=(
  "BP:bp:--method bp"
  "PC fixed, T = 12, η = 1 (the file's settings, one reverse sweep):pc_sweep:--method pc"
  "PC fixed, T = 12, η = 0.5:pc_fixed:--method pc --mode fixed --steps 12 --rate 0.5"
  "PC strict, T = 20, η = 0.1:pc_strict:--method pc --mode strict --steps 20 --rate 0.1"
)
plots=()
{
  echo "Made by \`scripts/autoencoder.sh\` with the \`jit\` backend on $(nproc) cores of $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1): \`examples/conv_autoencoder.pcg\` on mnist5k (4000 training and 1000 test images, 28×28), batch 32, Adam at 0.003, 5 epochs, seed 0. Test loss: the reconstruction's squared error summed over the 784 pixels, halved, averaged over the test images. max_rel_err: \`pcg gradcheck --batch 4\` at the row's settings (PC's update against BP's gradient, at the initial parameters)."
  echo
  echo "| training | test loss | seconds | gradcheck max_rel_err |"
  echo "|---|---|---|---|"
  for spec in "${settings[@]}"; do
    label=${spec%%:*}
    rest=${spec#*:}
    key=${rest%%:*}
    read -r -a flags <<<"${rest#*:}"
    line=$("$pcg" run "$file" "${flags[@]}" --metrics "$runs/$key.jsonl" --quiet)
    echo "$label: $line" >&2
    check=-
    if [ "$key" != bp ]; then
      relax=()
      for ((i = 0; i < ${#flags[@]}; i++)); do
        if [ "${flags[i]}" = --method ]; then i=$((i + 1)); else relax+=("${flags[i]}"); fi
      done
      check=$("$pcg" gradcheck "$file" "${relax[@]}" --batch 4 --tol 1e9 | tail -n 1)
      check=${check#max_rel_err=}
    fi
    echo "| $label | $(field test_loss "$line") | $(field seconds "$line") | $check |"
    plots+=("$key=$runs/$key.jsonl")
  done
} > docs/autoencoder.md
"$pcg" plot "${plots[@]}" --title "convolutional autoencoder on mnist5k" \
  --out docs/book/src/figures/autoencoder_curves.svg
cat docs/autoencoder.md
python3 scripts/book_tables.py
