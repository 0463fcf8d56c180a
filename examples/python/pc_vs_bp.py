"""Predictive coding against backprop on the 8x8 digits, from Python.

Trains examples/mlp_digits.pcg by backprop, by predictive coding with the file's fixed-mode
settings and by strict (standard) predictive coding, and draws, side by side, the runs' test
accuracy per epoch and how far predictive coding's weight updates are from backprop's
gradients after each relaxation step, in fixed and strict mode.

    pip install .  matplotlib
    python examples/python/pc_vs_bp.py            # writes pc_vs_bp.png
"""

import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import pcg  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "mlp_digits.pcg"
OUT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "pc_vs_bp.png")

runs = {
    "bp": {"method": "bp"},
    "pc fixed": {"method": "pc"},
    "pc strict": {"method": "pc", "mode": "strict", "steps": 20, "rate": 0.5},
}
curves = {}
for label, settings in runs.items():
    m = pcg.compile(MODEL)
    history = m.fit(epochs=20, **settings)
    curves[label] = [h["test_acc"] for h in history]
    print(f"{label}: test accuracy {curves[label][-1]:.4f} after {len(history)} epochs")

# The error of PC's update against BP's gradient, at the initial parameters, per step.
m = pcg.compile(MODEL)
errors = {}
for mode, rate in [("fixed", 0.5), ("strict", 0.5)]:
    report = m.gradcheck(mode=mode, steps=40, rate=rate)
    worst = None
    for trace in report["params"].values():
        worst = trace["rel_err"] if worst is None else [max(a, b) for a, b in zip(worst, trace["rel_err"])]
    steps = next(iter(report["params"].values()))["step"]
    errors[f"{mode}, rate {rate}"] = (steps, worst)

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for label, acc in curves.items():
    left.plot(range(1, len(acc) + 1), acc, label=label, linestyle="--" if label == "pc fixed" else "-")
left.set(xlabel="epoch", ylabel="test accuracy", title="mlp_digits: PC and BP (fixed PC lies on BP)")
left.legend()
for label, (steps, worst) in errors.items():
    right.semilogy(steps, worst, label=label)
right.set(xlabel="relaxation step", ylabel="largest relative error", title="PC update vs BP gradient")
right.legend()
fig.tight_layout()
fig.savefig(OUT, dpi=120)
print(f"wrote {OUT}")
