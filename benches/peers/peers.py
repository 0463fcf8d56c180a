"""The same fixed-prediction predictive-coding training step, and the backprop step, as pcg
compiles for examples/mlp_fmnist.pcg (784-256-256-10, tanh hidden, linear output, MSE averaged
over the batch) and benches/mlp_b1.pcg (64-256-256-10), in PyTorch (eager) and JAX (jit, the
relaxation loop under lax.fori_loop), on the CPU with 2 threads.

One PC step: the feedforward pass; T synchronous relaxation steps of size eta with predictions
and Jacobians frozen at the feedforward values,
    v_i <- v_i + eta * (-eps_i + sum over children of (d mu_j / d v_i)^T eps_j);
the local weight updates dW = (input)^T (eps * f'); and an SGD step. One BP step: forward,
backward, SGD. Timings are the median over iterations after warm-up, in ms per training step.

Usage: python peers.py --sizes 784,256,256,10 --batch 64 --steps 20 [--iters 50] [--json]
"""
import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=2")


def timed(step, iters, warmup=5):
    for _ in range(warmup):
        step()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        samples.append((time.perf_counter() - t0) * 1e3)
    return min(samples), statistics.median(samples)


def torch_bench(sizes, batch, steps, rate, lr, iters):
    import torch

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    (n0, n1, n2, n3) = sizes
    W = [torch.randn(a, b, generator=g) * (1.0 / a) ** 0.5 for a, b in [(n0, n1), (n1, n2), (n2, n3)]]
    bias = [torch.zeros(b) for b in (n1, n2, n3)]
    x = torch.randn(batch, n0, generator=g)
    y = torch.zeros(batch, n3)
    y[torch.arange(batch), torch.randint(0, n3, (batch,), generator=g)] = 1.0

    @torch.no_grad()
    def pc_step():
        # Feedforward: every value unit starts at its prediction.
        h1 = torch.tanh(x @ W[0] + bias[0])
        h2 = torch.tanh(h1 @ W[1] + bias[1])
        out = h2 @ W[2] + bias[2]
        e_out = (y - out) / batch                     # -dL/d out, clamped
        d1, d2 = 1 - h1 * h1, 1 - h2 * h2             # frozen Jacobians
        msg2 = e_out @ W[2].T                         # constant in fixed mode
        v1, v2 = h1.clone(), h2.clone()
        for _ in range(steps):
            e1, e2 = v1 - h1, v2 - h2
            v1 = v1 + rate * (-e1 + (e2 * d2) @ W[1].T)
            v2 = v2 + rate * (-e2 + msg2)
        e1, e2 = v1 - h1, v2 - h2
        g1, g2 = e1 * d1, e2 * d2
        updates = [(x.T @ g1, g1.sum(0)), (h1.T @ g2, g2.sum(0)), (h2.T @ e_out, e_out.sum(0))]
        for i, (dw, db) in enumerate(updates):
            W[i] += lr * dw
            bias[i] += lr * db

    Wt = [w.clone().requires_grad_(True) for w in W]
    bt = [b.clone().requires_grad_(True) for b in bias]

    def bp_step():
        h1 = torch.tanh(x @ Wt[0] + bt[0])
        h2 = torch.tanh(h1 @ Wt[1] + bt[1])
        out = h2 @ Wt[2] + bt[2]
        loss = 0.5 * ((out - y) ** 2).sum() / batch
        grads = torch.autograd.grad(loss, Wt + bt)
        with torch.no_grad():
            for p, gr in zip(Wt + bt, grads):
                p -= lr * gr

    return {"pc": timed(pc_step, iters), "bp": timed(bp_step, iters)}


def jax_bench(sizes, batch, steps, rate, lr, iters):
    import jax
    import jax.numpy as jnp

    (n0, n1, n2, n3) = sizes
    key = jax.random.PRNGKey(0)
    ks = jax.random.split(key, 6)
    W = tuple(jax.random.normal(k, (a, b)) * (1.0 / a) ** 0.5 for k, (a, b) in zip(ks, [(n0, n1), (n1, n2), (n2, n3)]))
    bias = tuple(jnp.zeros(b) for b in (n1, n2, n3))
    x = jax.random.normal(ks[3], (batch, n0))
    y = jax.nn.one_hot(jax.random.randint(ks[4], (batch,), 0, n3), n3)

    @jax.jit
    def pc_step(W, bias):
        h1 = jnp.tanh(x @ W[0] + bias[0])
        h2 = jnp.tanh(h1 @ W[1] + bias[1])
        out = h2 @ W[2] + bias[2]
        e_out = (y - out) / batch
        d1, d2 = 1 - h1 * h1, 1 - h2 * h2
        msg2 = e_out @ W[2].T

        def relax(_, v):
            v1, v2 = v
            e1, e2 = v1 - h1, v2 - h2
            return (v1 + rate * (-e1 + (e2 * d2) @ W[1].T), v2 + rate * (-e2 + msg2))

        v1, v2 = jax.lax.fori_loop(0, steps, relax, (h1, h2))
        e1, e2 = v1 - h1, v2 - h2
        g1, g2 = e1 * d1, e2 * d2
        dW = (x.T @ g1, h1.T @ g2, h2.T @ e_out)
        db = (g1.sum(0), g2.sum(0), e_out.sum(0))
        return (tuple(w + lr * d for w, d in zip(W, dW)), tuple(b + lr * d for b, d in zip(bias, db)))

    def loss_fn(params):
        W, bias = params
        h1 = jnp.tanh(x @ W[0] + bias[0])
        h2 = jnp.tanh(h1 @ W[1] + bias[1])
        out = h2 @ W[2] + bias[2]
        return 0.5 * jnp.sum((out - y) ** 2) / batch

    @jax.jit
    def bp_step(params):
        grads = jax.grad(loss_fn)(params)
        return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)

    state = {"pc": (W, bias), "bp": (W, bias)}

    def run_pc():
        state["pc"] = pc_step(*state["pc"])
        jax.block_until_ready(state["pc"])

    def run_bp():
        state["bp"] = bp_step(state["bp"])
        jax.block_until_ready(state["bp"])

    return {"pc": timed(run_pc, iters), "bp": timed(run_bp, iters)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="784,256,256,10")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for name, bench in [("pytorch", torch_bench), ("jax", jax_bench)]:
        try:
            results[name] = bench(sizes, args.batch, args.steps, args.rate, args.lr, args.iters)
        except ImportError as e:
            results[name] = {"error": f"not installed ({e.name}); pip install torch 'jax[cpu]'"}
    if args.json:
        print(json.dumps(results))
    else:
        for name, r in results.items():
            if "error" in r:
                print(f"{name}: {r['error']}")
            else:
                for method, (lo, med) in r.items():
                    print(f"{name} {method}: min {lo:.3f} ms, median {med:.3f} ms per step")


if __name__ == "__main__":
    main()
