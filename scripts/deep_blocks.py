"""Each residual block's update against backprop's gradient, for strict PC and ePC.

At the initial parameters of examples/resnet128_spc.pcg (128 residual blocks, a PC graph 130
nodes deep) and on its first batch, `pcg grad` gives backprop's gradient and PC's update
(strict and ePC, the file's nudged target and rate) after T relaxation steps; for each block l
this plots |PC update of w[l]| / |BP gradient of w[l]| (left) and their cosine (right). Strict
PC's errors fade with the distance from the loss; ePC's reach every block from the first step.

    PCG=target/release/pcg python scripts/deep_blocks.py [OUT.png]   (numpy, matplotlib)
"""

import os
import pathlib
import subprocess
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
PCG = os.environ.get("PCG", str(ROOT / "target" / "release" / "pcg"))
MODEL = ROOT / "examples" / "resnet128_spc.pcg"
OUT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "deep_blocks.png")
RUNS = [("strict", 20), ("strict", 200), ("epc", 20), ("epc", 200)]


def grads(directory, *flags):
    path = pathlib.Path(directory) / "g.npz"
    subprocess.run([PCG, "grad", str(MODEL), "--out", str(path), *flags], check=True,
                   stdout=subprocess.DEVNULL)
    with np.load(path) as arrays:
        return {name: arrays[name].astype(np.float64) for name in arrays.files}


def per_block(update, grad):
    rows = []
    for u, g in zip(update, grad):
        u, g = u.ravel(), g.ravel()
        nu, ng = np.linalg.norm(u), np.linalg.norm(g)
        rows.append((nu / max(ng, 1e-30), u @ g / max(nu * ng, 1e-30)))
    return np.array(rows)


with tempfile.TemporaryDirectory() as tmp:
    bp = grads(tmp, "--method", "bp")
    results = {}
    for mode, steps in RUNS:
        pc = grads(tmp, "--method", "pc", "--mode", mode, "--steps", str(steps))
        results[(mode, steps)] = per_block(pc["w"], bp["w"])
        rows = results[(mode, steps)]
        print(f"{mode}, T={steps}: block 0 size {rows[0, 0]:.3g} cosine {rows[0, 1]:.3f}; "
              f"block {len(rows) - 1} size {rows[-1, 0]:.3g} cosine {rows[-1, 1]:.3f}")

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
colors = {"strict": "C0", "epc": "C1"}
for (mode, steps), rows in results.items():
    style = "-" if steps == RUNS[-1][1] else "--"
    label = f"{mode}, T={steps}"
    left.semilogy(range(len(rows)), np.maximum(rows[:, 0], 1e-16), color=colors[mode], linestyle=style,
                  label=label)
    right.plot(range(len(rows)), rows[:, 1], color=colors[mode], linestyle=style, label=label)
left.set(xlabel="block l (0 = nearest the input)", ylabel="|PC update of w[l]| / |BP gradient|",
         title="resnet128_spc: size of the update by depth")
right.set(xlabel="block l (0 = nearest the input)", ylabel="cosine(PC update, BP gradient)",
          title="direction by depth", ylim=(-0.1, 1.05))
left.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT, dpi=120)
print(f"wrote {OUT}")
