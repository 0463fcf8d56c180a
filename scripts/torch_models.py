"""Real PyTorch models through `pcg import`: the gradients pcg computes on the imported model
against torch autograd's on the original.

For each model (torchvision's ResNet-18, MobileNetV3-Small and SqueezeNet 1.1 with 10
classes, `nn.LSTM`, `nn.GRU`, `nn.TransformerEncoderLayer` with norm_first and no dropout, and
an MLP with GELU), in eval mode and seeded: export it with `torch.onnx.export` (opset 17, the
TorchScript exporter, no constant folding so that batch norms stay batch norms and the
initializers keep their module names), `pcg import` it, then on one fixed batch compare
torch's gradient of the loss (the one `pcg import --loss` writes: cross-entropy against
one-hot labels for the classifiers, ½Σ(out − y)²/B for the others) with

- `pcg grad --method bp`,
- `pcg grad --method pc --mode exact`,
- `pcg grad --method pc --mode fixed` at growing step counts T, rate 1 (it reaches them once
  T passes the graph's depth),

as the largest relative error over the parameters, ‖g_pcg − g_torch‖ / ‖g_torch‖ per
parameter; and the round trip `pcg export` of the imported model (initializers under their
ONNX names) run by ONNX Runtime against the original file, as the largest relative difference
of the outputs. Writes a markdown table (stdout, and `--out FILE`).

    PCG=target/release/pcg python scripts/torch_models.py [--out docs/torch_models.md] [NAMES...]

Needs torch, torchvision, onnx, onnxruntime and numpy (not part of CI: torch is gigabytes).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

PCG = os.environ.get("PCG", "target/release/pcg")
BATCH = 4


class Recurrent(nn.Module):
    """A recurrent layer (batch first) and a linear read-out of every step."""

    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(input_size=6, hidden_size=8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out)


class Encoder(nn.Module):
    """A pre-norm transformer encoder layer and a linear read-out."""

    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, norm_first=True,
            batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.layer(x))


def models():
    """name → (module, example input, loss)."""
    torch.manual_seed(0)
    image = torch.randn(BATCH, 3, 32, 32)
    return {
        "resnet18": (torchvision.models.resnet18(num_classes=10), image, "cross_entropy"),
        "mobilenet_v3_small": (torchvision.models.mobilenet_v3_small(num_classes=10), image,
                               "cross_entropy"),
        "squeezenet1_1": (torchvision.models.squeezenet1_1(num_classes=10), image,
                          "cross_entropy"),
        "lstm": (Recurrent(nn.LSTM), torch.randn(BATCH, 5, 6), "mse"),
        "gru": (Recurrent(nn.GRU), torch.randn(BATCH, 5, 6), "mse"),
        "transformer_layer": (Encoder(), torch.randn(BATCH, 5, 16), "mse"),
        "mlp_gelu": (nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 5)),
                     torch.randn(BATCH, 12), "mse"),
    }


def with_trained_statistics(module, x):
    """Parameters moved off their initial values (as training moves them: the exporter merges
    initializers of equal values, such as every layer norm's ones, into one), and batch norms
    with running statistics other than their initial 0 and 1 (a few training-mode passes), so
    that eval mode's normalisation is not the identity."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
        module.train()
        with torch.no_grad():
            for _ in range(3):
                module(x + 0.5 * torch.randn_like(x))
    return module.eval()


def torch_gradients(module, x, y, loss):
    module.zero_grad()
    out = module(x)
    if loss == "cross_entropy":
        value = -(y * F.log_softmax(out, dim=-1)).sum() / out.shape[0]
    else:
        value = 0.5 * ((out - y) ** 2).sum() / out.shape[0]
    value.backward()
    return float(value), {n: p.grad.detach().numpy().copy()
                          for n, p in module.named_parameters()}


def run(args):
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}:\n{done.stderr}")
    return done.stdout


def worst(found, reference, names):
    """The largest relative error over the parameters (by their ONNX names)."""
    errors = []
    for onnx_name, g in reference.items():
        pcg_name = names[onnx_name]
        f = found[pcg_name]
        errors.append(np.linalg.norm(f - g) / max(np.linalg.norm(g), 1e-30))
    return max(errors)


def check(name, module, x, loss, work):
    module = with_trained_statistics(module, x)
    with torch.no_grad():
        out = module(x)
    if loss == "cross_entropy":
        labels = torch.arange(out.shape[0]) % out.shape[-1]
        y = F.one_hot(labels, out.shape[-1]).float()
    else:
        y = torch.randn_like(out)
    value, reference = torch_gradients(module, x, y, loss)
    onnx_path = work / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, x, onnx_path, opset_version=17, dynamo=False,
                          do_constant_folding=False, input_names=["x"], output_names=["out"],
                          training=torch.onnx.TrainingMode.EVAL)
    model, params, names = work / f"{name}.pcg", work / f"{name}.npz", work / f"{name}.json"
    run([PCG, "import", str(onnx_path), "--out", str(model), "--params", str(params),
         "--names", str(names), "--loss", loss])
    names = json.loads(names.read_text())
    inputs = work / f"{name}_inputs.npz"
    np.savez(inputs, x=x.numpy(), y=y.numpy())

    def grad(*extra):
        out = work / f"{name}_grad.npz"
        run([PCG, "grad", str(model), "--params", str(params), "--inputs", str(inputs),
             "--batch", str(BATCH), "--out", str(out), *extra])
        return dict(np.load(out))

    row = {"model": name, "params": sum(g.size for g in reference.values()),
           "tensors": len(reference), "loss": value}
    row["bp"] = worst(grad("--method", "bp"), reference, names)
    row["exact"] = worst(grad("--method", "pc", "--mode", "exact"), reference, names)
    exported = work / f"{name}_exported.onnx"
    run([PCG, "export", str(model), "--params", str(params), "--names",
         str(work / f"{name}.json"), "--batch", str(BATCH), "--out", str(exported)])

    def ort(path, feed):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: feed})[0]

    original, back = ort(onnx_path, x.numpy()), ort(exported, x.numpy())
    row["export"] = float(np.abs(back - original).max() / np.abs(original).max())
    row["fixed"] = [(t, worst(grad("--method", "pc", "--mode", "fixed", "--steps", str(t),
                                    "--rate", "1.0"),
                              reference, names)) for t in (10, 50, 200)]
    return row


def table(rows):
    lines = [
        "| model | parameters (tensors) | bp vs torch | PC exact vs torch | PC fixed T = 10 / 50 / 200 | export round trip |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | import or grad failed: {r['error']} | | | |")
            continue
        fixed = " / ".join(f"{e:.1e}" for _, e in r["fixed"])
        lines.append(f"| {r['model']} | {r['params']} ({r['tensors']}) | {r['bp']:.1e} | "
                     f"{r['exact']:.1e} | {fixed} | {r['export']:.1e} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    chosen = models()
    if args.names:
        chosen = {n: chosen[n] for n in args.names}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (module, x, loss) in chosen.items():
            try:
                rows.append(check(name, module, x, loss, Path(tmp)))
            except RuntimeError as e:
                first = str(e).strip().splitlines()[-1]
                rows.append({"model": name, "error": first.replace("|", "/")})
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
