#!/usr/bin/env bash
# An imported torchvision ResNet-18 trained by predictive coding and by backprop.
#
# Builds torchvision's ResNet-18 (10 classes, a one-channel stem for 28×28 digits), exports it
# with torch.onnx.export (eval mode, opset 17: batch norms keep their running statistics, which
# `pcg import` declares `frozen`), imports it, and trains the imported model from the exported
# weights on mnist5k with the same optimiser, batch and seed: once by backprop, once by
# predictive coding in fixed mode (steps and rate below). Prints each run's final line and
# writes the table to docs/imported_resnet.md.
#
#   PCG=target/release/pcg PYTHON=python-with-torch bash scripts/imported_resnet.sh [EPOCHS] [STEPS]
#
# Needs torch and torchvision (not part of CI).
set -euo pipefail
cd "$(dirname "$0")/.."
PCG=${PCG:-target/release/pcg}
PYTHON=${PYTHON:-python3}
EPOCHS=${1:-3}
STEPS=${2:-200}
out=target/imported
mkdir -p "$out"
"$PYTHON" - "$out/resnet18.onnx" <<'PY'
import sys, warnings
import torch, torch.nn as nn, torchvision
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=10)
model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
model.eval()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(model, torch.randn(32, 1, 28, 28), sys.argv[1], opset_version=17,
                      dynamo=False, do_constant_folding=False, input_names=["x"],
                      output_names=["logits"], training=torch.onnx.TrainingMode.EVAL)
PY
"$PCG" import "$out/resnet18.onnx" --out "$out/resnet18.pcg" --params "$out/resnet18.npz" \
    --loss cross_entropy --batch 32
# The imported train block sets the batch only: data, optimiser, epochs and the relaxation.
sed -i '/^train resnet18 {/,$d' "$out/resnet18.pcg"
cat >> "$out/resnet18.pcg" <<TRAIN
train resnet18 {
    data      = mnist5k
    optimizer = adam(lr = 0.0005)
    batch     = 32
    epochs    = $EPOCHS
    seed      = 0
    inference { mode = fixed steps = $STEPS rate = 1.0 }
}
TRAIN
"$PCG" check "$out/resnet18.pcg"
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
rows=()
for method in bp pc; do
    line=$("$PCG" run "$out/resnet18.pcg" --method "$method" --params "$out/resnet18.npz" \
        --quiet | tail -1)
    echo "$line"
    rows+=("| $method | $(sed -n 's/.*test_acc=\([^ ]*\).*/\1/p' <<<"$line") | $(sed -n 's/.*seconds=\([^ ]*\).*/\1/p' <<<"$line") |")
done
{
    echo "ResNet-18 (torchvision, one-channel stem) exported to ONNX, imported by \`pcg import\`,"
    echo "trained from the exported weights on mnist5k for $EPOCHS epoch(s): Adam 0.0005, batch 32,"
    echo "seed 0; PC in fixed mode, $STEPS steps at rate 1.0. Machine: $cpu, $(nproc) threads."
    echo "Made by \`bash scripts/imported_resnet.sh $EPOCHS $STEPS\`."
    echo
    echo "| method | test accuracy | seconds |"
    echo "| --- | --- | --- |"
    printf '%s\n' "${rows[@]}"
} > docs/imported_resnet.md
cat docs/imported_resnet.md
