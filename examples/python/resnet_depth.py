"""How far predictive coding's updates are from backprop's gradients on a 65-node-deep graph.

examples/resnet_deep.pcg stacks 64 residual blocks; every block's output is a PC node. At the
file's initial parameters and on the first batch of its data, this script measures PC's weight
updates against BP's gradients

  * against the number of relaxation steps T, for strict (standard) PC and for fixed-prediction
    PC, each at two step sizes (left panel: the first layer's weights, the farthest from the
    loss, and the stacked block weights as a whole), and
  * block by block, at T = 66 (one more than the depth) and at the largest T: the size of each
    block's weight update relative to BP's gradient (middle panel) and their cosine (right).

The error of a node's update reaches it only after as many steps as it is deep, divided by the
step size; in fixed mode it then equals BP's (exactly at rate 1 and T >= depth). In strict mode
the output's error is shared out among the nodes as they relax, so the signal that reaches a
block shrinks with its distance from the loss: its direction stays close to BP's near the
output, its size fades towards the input.

    pip install .  matplotlib
    python examples/python/resnet_depth.py [OUT.png]   # writes resnet_depth.png
"""

import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import pcg  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "resnet_deep.pcg"
OUT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "resnet_depth.png")

# (mode, rate, largest T): strict PC moves the error about `rate` layers per step.
SETTINGS = [("fixed", 1.0, 200), ("fixed", 0.5, 200), ("strict", 0.3, 1000), ("strict", 0.1, 1000)]

m = pcg.compile(MODEL)
batch = m.default_batch()
_, bp = m.grad(batch, method="bp")


def size_and_cosine(update, grad):
    u, g = update.ravel(), grad.ravel()
    nu, ng = np.linalg.norm(u), np.linalg.norm(g)
    return nu / max(ng, 1e-30), float(u @ g / max(nu * ng, 1e-30))


traces = {}
blocks = {}
for mode, rate, largest in SETTINGS:
    label = f"{mode}, rate {rate}"
    report = m.gradcheck(batch, mode=mode, steps=largest, rate=rate)
    depth = report["depth"]
    params = report["params"]
    traces[label] = (params["w_in"]["step"], params["w_in"]["rel_err"], params["w"]["rel_err"])
    for steps in (depth + 1, largest):
        _, pc = m.grad(batch, method="pc", mode=mode, steps=steps, rate=rate)
        blocks[(label, steps)] = np.array(
            [size_and_cosine(pc["w"][l], bp["w"][l]) for l in range(bp["w"].shape[0])]
        )
    at = list(params["w_in"]["step"]).index(depth + 1)
    print(
        f"{label}: w_in error {params['w_in']['rel_err'][at]:.3g} at T={depth + 1}, "
        f"{params['w_in']['rel_err'][-1]:.3g} at T={largest}; "
        f"at T={largest}: block 0 size {blocks[(label, largest)][0, 0]:.3g} cosine "
        f"{blocks[(label, largest)][0, 1]:.3f}, block 63 size {blocks[(label, largest)][-1, 0]:.3g} cosine "
        f"{blocks[(label, largest)][-1, 1]:.3f}"
    )

fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.5))
colors = {label: f"C{i}" for i, label in enumerate(traces)}
for label, (steps, first, stacked) in traces.items():
    left.semilogy(steps, np.maximum(first, 1e-16), color=colors[label], label=f"{label}: w_in")
    left.semilogy(steps, np.maximum(stacked, 1e-16), color=colors[label], linestyle=":", label=f"{label}: w[·]")
left.axvline(depth, color="grey", linewidth=0.8)
left.text(depth, 1e-15, f" depth {depth}", color="grey")
left.set(
    xscale="log",
    xlabel="relaxation steps T",
    ylabel="relative error of PC's update",
    title="resnet_deep: PC update vs BP gradient",
)
left.legend(fontsize=7)
for (label, steps), rows in blocks.items():
    style = "-" if steps > depth + 1 else "--"
    middle.semilogy(range(len(rows)), np.maximum(rows[:, 0], 1e-16), color=colors[label], linestyle=style,
                    label=f"{label}, T={steps}")
    right.plot(range(len(rows)), rows[:, 1], color=colors[label], linestyle=style, label=f"{label}, T={steps}")
middle.set(xlabel="block l (0 = nearest the input)", ylabel="|PC update of w[l]| / |BP gradient|",
           title="size of the signal by depth")
right.set(xlabel="block l (0 = nearest the input)", ylabel="cosine(PC update, BP gradient)",
          title="direction by depth", ylim=(-0.1, 1.05))
middle.legend(fontsize=7)
fig.tight_layout()
fig.savefig(OUT, dpi=120)
print(f"wrote {OUT}")
