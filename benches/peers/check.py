"""Checks that every peer in peers.py computes pcg's update: for each configuration the runner
times, on a small instance (batch 4, the LSTM over 8 characters), random parameters and a
random batch are saved as .npz, `pcg grad` computes its update (it writes -D theta), the peer
computes its own on the same float32 arrays, and the relative error
|D_peer - D_pcg| / |D_pcg| of every parameter must be at most --tol (1e-4).

Usage: python check.py [--pcg PATH] [--tol 1e-4] [--only NAME,...] [--json FILE]
Prints one line per parameter and a PASS/FAIL line per peer; exits 1 when any peer fails.
--json writes {"<case> <library>": {"pass": bool, "max_rel_err": float}, ...} for run.sh.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402  (sets the thread environment before torch/jax load)

# name: (pcg file, peers model, sizes, batch, method, mode, steps, rate, --dim overrides, libs,
#        scale of the inputs and biases)
CASES = {
    "mlp_fmnist pc fixed T=20": ("examples/mlp_fmnist.pcg", "mlp", [784, 256, 256, 10], 4, "pc", "fixed", 20, 0.1, [], ["pytorch", "jax"], 1.0),
    "mlp_fmnist bp": ("examples/mlp_fmnist.pcg", "mlp", [784, 256, 256, 10], 4, "bp", None, 20, 0.1, [], ["pytorch", "jax"], 1.0),
    "mlp_b1 pc fixed T=100": ("benches/mlp_b1.pcg", "mlp", [64, 256, 256, 10], 1, "pc", "fixed", 100, 0.1, [], ["pytorch", "jax"], 1.0),
    "mlp_b1 bp": ("benches/mlp_b1.pcg", "mlp", [64, 256, 256, 10], 1, "bp", None, 100, 0.1, [], ["pytorch", "jax"], 1.0),
    "mlp_fmnist pc strict T=5": ("examples/mlp_fmnist.pcg", "mlp_strict", [784, 256, 256, 10], 4, "pc", "strict", 5, 0.1, [], ["pytorch", "jax"], 1.0),
    "mlp_fmnist pc strict T=20": ("examples/mlp_fmnist.pcg", "mlp_strict", [784, 256, 256, 10], 4, "pc", "strict", 20, 0.1, [], ["pytorch", "jax"], 1.0),
    # The PCX variants: state momentum 0.9 and a target nudged by beta = 0.5 (FLAGS below).
    "mlp_fmnist pc strict T=20 momentum 0.9 nudge 0.5": ("examples/mlp_fmnist.pcg", "mlp_strict_pcx", [784, 256, 256, 10], 4, "pc", "strict", 20, 0.1, [], ["jax"], 1.0),
    # Inputs and biases scaled by 1e-4. At scale 1, after 10 steps at eta = 0.1 the error of the
    # first node (conv output y0, 6 hops from the output) is 3e-7 of its value (a1: 4e-6, y1:
    # 3e-5), so eps = v - mu is a few float32 ulps: pcg's own k1 update is then 8e-2 away from
    # the float64 one, and the float32 peer's as far. ReLU is positively homogeneous, so the
    # scaled instance keeps the feedforward activation pattern with small values, and strict
    # mode's update on it differs from fixed mode's by O(1): the check tells the modes apart.
    "cnn_fmnist pc strict T=10": ("examples/cnn_fmnist.pcg", "cnn_strict", None, 4, "pc", "strict", 10, 0.1, [], ["jax"], 1e-4),
    # The file's settings (T = 200 at eta = 0.5: near equilibrium, where the update is BP's)...
    "lstm_shakespeare pc fixed T=200": ("examples/lstm_shakespeare.pcg", "lstm_fixed", [8, 73, 64], 4, "pc", "fixed", 200, 0.5, ["T=8"], ["jax"], 1.0),
    # ...and a few steps, far from equilibrium, which checks the relaxation dynamics themselves.
    "lstm_shakespeare pc fixed T=7": ("examples/lstm_shakespeare.pcg", "lstm_fixed", [8, 73, 64], 4, "pc", "fixed", 7, 0.5, ["T=8"], ["jax"], 1.0),
    # Backprop through time: PyTorch's fused nn.LSTM, and jax.grad through a lax.scan.
    "lstm_shakespeare bp": ("examples/lstm_shakespeare.pcg", "lstm_fixed", [8, 73, 64], 4, "bp", None, 200, 0.5, ["T=8"], ["pytorch", "jax"], 1.0),
}


# pcg flags of the peers models that are a variant of another.
FLAGS = {"mlp_strict_pcx": ["--momentum", "0.9", "--target", "nudge(0.5)"]}


def pcg_update(pcg, file, method, mode, steps, rate, batch, dims, params, x, y, tmp, flags=()):
    np.savez(os.path.join(tmp, "params.npz"), **params)
    np.savez(os.path.join(tmp, "inputs.npz"), x=x, y=y)
    out = os.path.join(tmp, "g.npz")
    cmd = [pcg, "grad", file, "--method", method, "--batch", str(batch),
           "--params", os.path.join(tmp, "params.npz"), "--inputs", os.path.join(tmp, "inputs.npz"), "--out", out]
    if method == "pc":
        cmd += ["--mode", mode, "--steps", str(steps), "--rate", str(rate)]
    for d in dims:
        cmd += ["--dim", d]
    cmd += list(flags)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    g = np.load(out)
    return {k: -g[k].astype(np.float64) for k in g.files}  # pcg writes -D theta


def peer_update(lib, model, method, steps, rate, params, x, y):
    update = peers.PEERS[(model, lib)][method](steps, rate)
    arrays = peers.to_library(lib, {**params, "x": x, "y": y})
    xl, yl = arrays.pop("x"), arrays.pop("y")
    d = update(arrays, xl, yl)
    sign = -1.0 if getattr(update, "returns_gradient", False) else 1.0
    return {k: sign * np.asarray(v.detach().numpy() if lib == "pytorch" else v, dtype=np.float64)
            for k, v in d.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pcg", default=os.environ.get("PCG") or os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "pcg"))
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--only", help="comma-separated case names (substrings)")
    ap.add_argument("--json")
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass
    summary = {}
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name, (file, model, sizes, batch, method, mode, steps, rate, dims, libs, scale) in CASES.items():
            if args.only and not any(s in name for s in args.only.split(",")):
                continue
            params, x, y = peers.random_problem(model, sizes, batch, seed=1)
            if scale != 1.0:
                x = (x * scale).astype(np.float32)
                for k, v in params.items():
                    if v.ndim == 1:
                        params[k] = (v * scale).astype(np.float32)
            try:
                ref = pcg_update(args.pcg, file, method, mode, steps, rate, batch, dims, params, x, y, tmp,
                                 FLAGS.get(model, ()))
            except (OSError, subprocess.CalledProcessError) as e:
                for lib in libs:
                    print(f"FAIL {name} {lib}: pcg grad failed ({e})")
                    summary[f"{name} {lib}"] = {"pass": False, "error": f"pcg grad failed: {e}"}
                failed = True
                continue
            for lib in libs:
                key = f"{name} {lib}"
                try:
                    got = peer_update(lib, model, method, steps, rate, params, x, y)
                except ImportError as e:
                    print(f"SKIP {key}: {e.name} not installed")
                    summary[key] = {"pass": False, "error": f"{e.name} not installed"}
                    continue
                except Exception as e:  # a broken peer fails its check, the others go on
                    print(f"FAIL {key}: {type(e).__name__}: {e}")
                    summary[key] = {"pass": False, "error": f"{type(e).__name__}: {e}"}
                    failed = True
                    continue
                worst = 0.0
                ok = set(got) == set(ref)
                for k in sorted(ref):
                    if k not in got:
                        print(f"  {key} {k}: missing from the peer")
                        continue
                    err = float(np.linalg.norm(got[k] - ref[k]) / max(np.linalg.norm(ref[k]), 1e-30))
                    worst = max(worst, err)
                    print(f"  {key:45s} {k:3s} |D_pcg| = {np.linalg.norm(ref[k]):.3e}  rel err = {err:.2e}")
                ok = ok and worst <= args.tol
                failed |= not ok
                summary[key] = {"pass": ok, "max_rel_err": worst}
                print(f"{'PASS' if ok else 'FAIL'} {key}: max rel err {worst:.2e} (tol {args.tol:g})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
