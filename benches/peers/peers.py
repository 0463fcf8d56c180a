"""Peer implementations, in PyTorch (eager) and JAX (jit), of the training steps pcg compiles,
for a speed comparison on the CPU with 2 threads. Each peer computes exactly pcg's update (see
the `//!` at the top of src/pc/mod.rs); benches/peers/check.py checks that against `pcg grad`.

Models (`--model`):
  mlp           examples/mlp_fmnist.pcg or benches/mlp_b1.pcg (`--sizes`), tanh hidden layers,
                linear output, MSE averaged over the batch: the fixed-prediction PC step and the
                backprop step, in PyTorch and JAX.
  mlp_strict    the same perceptron, standard (strict) PC: predictions and Jacobians at the
                current values every relaxation step. JAX: the energy as a function of the value
                units, jax.grad of it inside lax.fori_loop, under jit (as PCX users write it).
                PyTorch: eager, torch.no_grad, the messages written by hand.
  cnn_strict    examples/cnn_fmnist.pcg, strict PC, JAX (jax.grad of the energy in fori_loop,
                unrolled: fori_loop(..., unroll=T), the same program as PCX's Python loop of T
                steps under jit; XLA:CPU ran the rolled loop about 1.8x slower here).
  lstm_fixed    examples/lstm_shakespeare.pcg, fixed-prediction PC, JAX: the frozen Jacobian
                factors from one feedforward lax.scan, then every relaxation step updates every
                time step's nodes at once (one [(S-1)B, 4H] x [4H, H] product for the messages
                from the z's to the previous h's), inside lax.fori_loop under jit. And the
                backprop step: PyTorch's fused torch.nn.LSTM (batch_first) with an nn.Linear
                head, F.cross_entropy and torch.optim.SGD, as a PyTorch user writes it; JAX:
                jax.grad through a lax.scan of the cell, under jit. `--sizes seq,73,64` sets the
                sequence length (pcg's side: `pcg bench ... --dim T=seq`).

PC semantics (pcg's): every `let`-bound value computed from data and parameters is a node; a
node only the loss reads is an output, its error clamped to -dL/dmu at its prediction; the
others are relaxed, v_i starting at the feedforward prediction, eps_i = v_i - mu_i(v_parents),
    v_i <- v_i + eta * (-eps_i + sum over children j of (d mu_j / d v_i)^T eps_j)
for T synchronous steps; then the update D theta = sum_{j uses theta} (d mu_j / d theta)^T eps_j
at the final state, and SGD theta <- theta + lr * D theta. In strict mode that is
v <- v - eta * grad_v E and D theta = -grad_theta E of the energy
E = 1/2 sum_relaxed |v_i - mu_i(v)|^2 + L(mu_out(v)).

Each builder returns `update(params, x, y) -> {name: D theta}` on the library's arrays, with
parameter names as in the .pcg file (or the gradient, -D theta, where the function has
`returns_gradient` set: PyTorch's backprop); the timed step is that update plus SGD, or, where the
function has `train_step(params, x, y, lr) -> step` (PyTorch's nn.LSTM), that step: a model that
keeps its own parameters, built once from `params`. Timings are the median over iterations after
warm-up, in ms per training step.

Usage: python peers.py [--model mlp] [--sizes 784,256,256,10] [--batch 64] [--steps 20]
                       [--rate 0.1] [--iters 50] [--warmup 5] [--libs pytorch,jax]
                       [--methods pc,bp] [--json]
(--sizes, --batch, --steps and --rate default to the model's configuration in MODELS.)
"""
import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=2")

# The configurations the runner times: model -> defaults (sizes, batch, steps, rate).
MODELS = {
    "mlp": dict(sizes="784,256,256,10", batch=64, steps=20, rate=0.1),
    "mlp_strict": dict(sizes="784,256,256,10", batch=64, steps=20, rate=0.1),
    "cnn_strict": dict(sizes=None, batch=64, steps=10, rate=0.1),
    "lstm_fixed": dict(sizes="50,73,64", batch=64, steps=200, rate=0.5),  # seq, vocab, hidden
}


def _unroll(unroll, steps):
    """fori_loop's unroll factor: the environment's PEER_UNROLL (1, a factor, or "full"), or
    else the builder's (1, rolled, except the CNN's "full"), for trying which is faster."""
    u = os.environ.get("PEER_UNROLL", unroll if unroll is not None else 1)
    return max(1, steps) if u == "full" else int(u)


def timed(step, iters, warmup=5):
    for _ in range(warmup):
        step()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        samples.append((time.perf_counter() - t0) * 1e3)
    return min(samples), statistics.median(samples)


# ---------------------------------------------------------------------------------------------
# The perceptron (mlp_fmnist, mlp_b1): params w1, b1, w2, b2, w3, b3; x [B, n0], y [B, n3].


def torch_mlp_fixed(steps, rate):
    import torch

    @torch.no_grad()
    def update(p, x, y):
        w1, b1, w2, b2, w3, b3 = (p[k] for k in ("w1", "b1", "w2", "b2", "w3", "b3"))
        batch = x.shape[0]
        # Feedforward: every value unit starts at its prediction.
        h1 = torch.tanh(x @ w1 + b1)
        h2 = torch.tanh(h1 @ w2 + b2)
        out = h2 @ w3 + b3
        e_out = (y - out) / batch                     # -dL/d out, clamped
        d1, d2 = 1 - h1 * h1, 1 - h2 * h2             # frozen Jacobians
        msg2 = e_out @ w3.T                           # constant in fixed mode
        v1, v2 = h1.clone(), h2.clone()
        for _ in range(steps):
            e1, e2 = v1 - h1, v2 - h2
            v1 = v1 + rate * (-e1 + (e2 * d2) @ w2.T)
            v2 = v2 + rate * (-e2 + msg2)
        e1, e2 = v1 - h1, v2 - h2
        g1, g2 = e1 * d1, e2 * d2
        return {"w1": x.T @ g1, "b1": g1.sum(0), "w2": h1.T @ g2, "b2": g2.sum(0),
                "w3": h2.T @ e_out, "b3": e_out.sum(0)}

    return update


def torch_mlp_bp():
    import torch

    def update(p, x, y):
        names = ("w1", "b1", "w2", "b2", "w3", "b3")
        leaves = [p[k].detach().requires_grad_(True) for k in names]
        w1, b1, w2, b2, w3, b3 = leaves
        h1 = torch.tanh(x @ w1 + b1)
        h2 = torch.tanh(h1 @ w2 + b2)
        out = h2 @ w3 + b3
        loss = 0.5 * ((out - y) ** 2).sum() / x.shape[0]
        return dict(zip(names, torch.autograd.grad(loss, leaves)))

    update.returns_gradient = True  # -D theta: the step subtracts it
    return update


def torch_mlp_strict(steps, rate):
    import torch

    @torch.no_grad()
    def update(p, x, y):
        w1, b1, w2, b2, w3, b3 = (p[k] for k in ("w1", "b1", "w2", "b2", "w3", "b3"))
        batch = x.shape[0]
        mu1 = torch.tanh(torch.addmm(b1, x, w1))      # x is clamped: mu1 is constant
        v1 = mu1.clone()
        v2 = torch.tanh(torch.addmm(b2, v1, w2))
        w2t, w3t = w2.T, w3.T

        def errors(v1, v2):                           # predictions at the current values
            mu2 = torch.tanh(torch.addmm(b2, v1, w2))
            e2 = v2 - mu2
            # -dL/d out at the current prediction: (y - out) / B
            e_out = torch.addmm(b3, v2, w3).sub_(y).mul_(-1.0 / batch)
            return v1 - mu1, e2, e2 * (1 - mu2 * mu2), e_out

        for _ in range(steps):                        # synchronous: all errors first
            e1, e2, g2, e_out = errors(v1, v2)
            v1.add_(torch.addmm(e1, g2, w2t, beta=-1), alpha=rate)   # -e1 + g2 w2^T
            v2.add_(torch.addmm(e2, e_out, w3t, beta=-1), alpha=rate)
        e1, e2, g2, e_out = errors(v1, v2)
        g1 = e1 * (1 - mu1 * mu1)
        return {"w1": x.T @ g1, "b1": g1.sum(0), "w2": v1.T @ g2, "b2": g2.sum(0),
                "w3": v2.T @ e_out, "b3": e_out.sum(0)}

    return update


def jax_mlp_fixed(steps, rate, unroll=None):
    import jax
    import jax.numpy as jnp

    @jax.jit
    def update(p, x, y):
        batch = x.shape[0]
        h1 = jnp.tanh(x @ p["w1"] + p["b1"])
        h2 = jnp.tanh(h1 @ p["w2"] + p["b2"])
        out = h2 @ p["w3"] + p["b3"]
        e_out = (y - out) / batch
        d1, d2 = 1 - h1 * h1, 1 - h2 * h2
        msg2 = e_out @ p["w3"].T

        def relax(_, v):
            v1, v2 = v
            e1, e2 = v1 - h1, v2 - h2
            return (v1 + rate * (-e1 + (e2 * d2) @ p["w2"].T), v2 + rate * (-e2 + msg2))

        v1, v2 = jax.lax.fori_loop(0, steps, relax, (h1, h2), unroll=_unroll(unroll, steps))
        e1, e2 = v1 - h1, v2 - h2
        g1, g2 = e1 * d1, e2 * d2
        return {"w1": x.T @ g1, "b1": g1.sum(0), "w2": h1.T @ g2, "b2": g2.sum(0),
                "w3": h2.T @ e_out, "b3": e_out.sum(0)}

    return update


def _jax_mlp_loss(p, x, y):
    import jax.numpy as jnp

    h1 = jnp.tanh(x @ p["w1"] + p["b1"])
    h2 = jnp.tanh(h1 @ p["w2"] + p["b2"])
    out = h2 @ p["w3"] + p["b3"]
    return 0.5 * jnp.sum((out - y) ** 2) / x.shape[0]


def jax_mlp_bp():
    import jax

    @jax.jit
    def update(p, x, y):
        return jax.tree_util.tree_map(lambda g: -g, jax.grad(_jax_mlp_loss)(p, x, y))

    return update


def jax_mlp_strict(steps, rate, unroll=None, momentum=0.0, beta=1.0):
    import jax
    import jax.numpy as jnp

    def energy(v, p, x, y):
        # 1/2 sum |v_i - mu_i(v)|^2 over the relaxed nodes, plus the loss at the output's
        # prediction (its gradient gives the clamped output error -dL/d mu_out).
        mu1 = jnp.tanh(x @ p["w1"] + p["b1"])
        mu2 = jnp.tanh(v["h1"] @ p["w2"] + p["b2"])
        out = v["h2"] @ p["w3"] + p["b3"]
        # beta scales the loss term (a nudged target); 1 clamps.
        return (0.5 * jnp.sum((v["h1"] - mu1) ** 2) + 0.5 * jnp.sum((v["h2"] - mu2) ** 2)
                + beta * 0.5 * jnp.sum((out - y) ** 2) / x.shape[0])

    def feedforward(p, x):
        h1 = jnp.tanh(x @ p["w1"] + p["b1"])
        return {"h1": h1, "h2": jnp.tanh(h1 @ p["w2"] + p["b2"])}

    return _jax_strict_update(energy, feedforward, steps, rate, unroll, momentum, beta)


def _jax_strict_update(energy, feedforward, steps, rate, unroll, momentum=0.0, beta=1.0):
    """Standard PC as PCX users write it: gradient descent on the energy with respect to the
    values inside fori_loop, then the weight update -dE/dtheta at the final values. With
    momentum, the values move as optax.sgd(rate, momentum) moves parameters (a trace
    t <- g + m t, then v <- v - rate t), PCX's default state optimiser; the update of a
    nudged energy (loss term times beta) is divided by beta."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def update(p, x, y):
        v0 = feedforward(p, x)
        t0 = jax.tree_util.tree_map(jnp.zeros_like, v0)

        def relax(_, state):
            v, t = state
            g = jax.grad(energy)(v, p, x, y)
            t = jax.tree_util.tree_map(lambda a, b: b + momentum * a, t, g)
            return jax.tree_util.tree_map(lambda a, b: a - rate * b, v, t), t

        v, _ = jax.lax.fori_loop(0, steps, relax, (v0, t0), unroll=_unroll(unroll, steps))
        g = jax.grad(energy, argnums=1)(v, p, x, y)
        return jax.tree_util.tree_map(lambda a: -a / beta, g)

    return update


# ---------------------------------------------------------------------------------------------
# The CNN (cnn_fmnist): params k1 [6,1,5,5], c1 [6], k2 [16,6,5,5], c2 [16], w1 [1024,200],
# b1, w2 [200,150], b2, w3 [150,10], b3; x [B,1,28,28], y [B,10]. Nodes (pcg's, from the lets,
# including conv_bias's `let y`): y0 = conv(x, k1); a1 = maxpool2(relu(y0 + c1));
# y1 = conv(a1, k2); a2 = relu(y1 + c2); f1 = relu(flatten(a2) @ w1 + b1);
# f2 = relu(f1 @ w2 + b2); out = f2 @ w3 + b3 (the output).


def _jax_cnn_parts():
    import jax
    import jax.numpy as jnp

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                            dimension_numbers=("NCHW", "OIHW", "NCHW"))

    def pool(a):
        n, c, h, w = a.shape
        return a.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))

    def relu(a):
        return jnp.maximum(a, 0)

    # One function per node: its prediction from its parents' values.
    preds = {
        "y0": lambda v, p, x: conv(x, p["k1"]),
        "a1": lambda v, p, x: pool(relu(v["y0"] + p["c1"][:, None, None])),
        "y1": lambda v, p, x: conv(v["a1"], p["k2"]),
        "a2": lambda v, p, x: relu(v["y1"] + p["c2"][:, None, None]),
        "f1": lambda v, p, x: relu(v["a2"].reshape(v["a2"].shape[0], -1) @ p["w1"] + p["b1"]),
        "f2": lambda v, p, x: relu(v["f1"] @ p["w2"] + p["b2"]),
        "out": lambda v, p, x: v["f2"] @ p["w3"] + p["b3"],
    }
    return preds


def jax_cnn_strict(steps, rate, unroll="full"):
    import jax
    import jax.numpy as jnp

    preds = _jax_cnn_parts()
    relaxed = ("y0", "a1", "y1", "a2", "f1", "f2")

    def energy(v, p, x, y):
        e = sum(0.5 * jnp.sum((v[k] - preds[k](v, p, x)) ** 2) for k in relaxed)
        out = preds["out"](v, p, x)
        return e + 0.5 * jnp.sum((out - y) ** 2) / x.shape[0]

    def feedforward(p, x):
        v0 = {}
        for k in relaxed:
            v0[k] = preds[k](v0, p, x)
        return v0

    return _jax_strict_update(energy, feedforward, steps, rate, unroll)


# ---------------------------------------------------------------------------------------------
# The LSTM (lstm_shakespeare): params w [V+H, 4H], b [4H], wy [H, V], by [V]; x, y [B, S, V].
# Nodes per time step t (from lstm_cell's lets): z_t = concat(x_t, h_{t-1}) @ w + b,
# i, f, g, o = sigmoid/sigmoid/tanh/sigmoid of z_t's four slices, c_t = f c_{t-1} + i g,
# h_t = o tanh(c_t), and the output logits_t = h_t @ wy + by, loss sum_t CE(logits_t, y_t) / S
# (CE averaged over the batch); h_{-1} = c_{-1} = 0 are constants.


def jax_lstm_gates(w, b, x_t, h, hid):
    """The LSTM's gates (input, forget, cell, output) from [x_t, h] @ w + b, as the .pcg cell."""
    import jax
    import jax.numpy as jnp

    z = jnp.concatenate([x_t, h], axis=1) @ w + b
    return (jax.nn.sigmoid(z[:, :hid]), jax.nn.sigmoid(z[:, hid:2 * hid]),
            jnp.tanh(z[:, 2 * hid:3 * hid]), jax.nn.sigmoid(z[:, 3 * hid:]))


def jax_lstm_fixed(steps, rate, unroll=None):
    import jax
    import jax.numpy as jnp

    @jax.jit
    def update(p, x, y):
        w, b, wy, by = p["w"], p["b"], p["wy"], p["by"]
        batch, seq, _ = x.shape
        hid = wy.shape[0]
        xs = jnp.swapaxes(x, 0, 1)                    # [S, B, V], time-major
        ys = jnp.swapaxes(y, 0, 1)

        def cell(carry, x_t):                         # the feedforward pass
            h, c = carry
            i, f, g, o = jax_lstm_gates(w, b, x_t, h, hid)
            c_next = f * c + i * g
            tc = jnp.tanh(c_next)
            h_next = o * tc
            return (h_next, c_next), (h, c, i, f, g, o, tc, h_next)

        zero = jnp.zeros((batch, hid), x.dtype)
        _, (h_prev, c_prev, i, f, g, o, tc, h) = jax.lax.scan(cell, (zero, zero), xs)

        # The outputs' errors, -dL/d logits at the feedforward predictions (constant).
        logits = h @ wy + by
        e_out = (ys - jax.nn.softmax(logits, axis=-1) * ys.sum(-1, keepdims=True)) / (batch * seq)
        msg_out = e_out @ wy.T                        # logits_t -> h_t, constant

        # Frozen Jacobian factors.
        d_gate = jnp.concatenate([i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o)], axis=-1)
        f_next = jnp.concatenate([f[1:], jnp.zeros_like(f[:1])])   # c_t -> c_{t+1} factor
        d_hc = o * (1 - tc * tc)                      # h_t -> c_t
        w_h_t = w[-hid:].T                            # z_{t+1} -> h_t: only h's rows of w

        def relax(_, e):
            e_z, e_gate, e_c, e_h = e                 # errors; in fixed mode eps = v - v_ff
            # Messages from each node's children, every time step at once.
            m_z = e_gate * d_gate
            m_gate = jnp.concatenate([e_c * g, e_c * c_prev, e_c * i, e_h * tc], axis=-1)
            m_c = e_h * d_hc + jnp.concatenate([e_c[1:], jnp.zeros_like(e_c[:1])]) * f_next
            m_zh = (e_z[1:].reshape(-1, 4 * hid) @ w_h_t).reshape(seq - 1, batch, hid)
            m_h = msg_out + jnp.concatenate([m_zh, jnp.zeros_like(m_zh[:1])])
            return (e_z + rate * (m_z - e_z), e_gate + rate * (m_gate - e_gate),
                    e_c + rate * (m_c - e_c), e_h + rate * (m_h - e_h))

        zeros = (jnp.zeros((seq, batch, 4 * hid), x.dtype), jnp.zeros((seq, batch, 4 * hid), x.dtype),
                 jnp.zeros((seq, batch, hid), x.dtype), jnp.zeros((seq, batch, hid), x.dtype))
        e_z, _, _, _ = jax.lax.fori_loop(0, steps, relax, zeros, unroll=_unroll(unroll, steps))

        # Learning, with the Jacobians frozen at the feedforward values.
        inputs = jnp.concatenate([xs, h_prev], axis=-1).reshape(seq * batch, -1)
        return {"w": inputs.T @ e_z.reshape(seq * batch, -1), "b": e_z.sum((0, 1)),
                "wy": h.reshape(seq * batch, hid).T @ e_out.reshape(seq * batch, -1),
                "by": e_out.sum((0, 1))}

    return update


def torch_lstm_bp():
    """The backprop step as a PyTorch user writes it: torch.nn.LSTM (batch_first; PyTorch's
    gate order i, f, g, o is the cell's) and an nn.Linear head, F.cross_entropy against the
    one-hot targets (its mean over the B S positions is pcg's sum over t of the batch-averaged
    CE, divided by S), backward, torch.optim.SGD. pcg's w [V+H, 4H] is weight_ih_l0^T stacked
    over weight_hh_l0^T; its one bias b is bias_ih_l0, and bias_hh_l0 is held at zero and not
    trained (two trained biases would take twice b's step)."""
    import torch
    import torch.nn.functional as F

    class CharLSTM(torch.nn.Module):
        def __init__(self, voc, hid):
            super().__init__()
            self.lstm = torch.nn.LSTM(voc, hid, batch_first=True)
            self.head = torch.nn.Linear(hid, voc)

        def forward(self, x):
            h, _ = self.lstm(x)                       # h_0 = c_0 = 0
            return self.head(h)

    def build(p):
        hid, voc = p["wy"].shape
        m = CharLSTM(voc, hid)
        with torch.no_grad():
            m.lstm.weight_ih_l0.copy_(p["w"][:voc].T)
            m.lstm.weight_hh_l0.copy_(p["w"][voc:].T)
            m.lstm.bias_ih_l0.copy_(p["b"])
            m.lstm.bias_hh_l0.zero_()
            m.head.weight.copy_(p["wy"].T)
            m.head.bias.copy_(p["by"])
        m.lstm.bias_hh_l0.requires_grad_(False)
        return m

    def loss_of(m, x, y):
        logits = m(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1, y.shape[-1]))

    def update(p, x, y):
        m = build(p)
        loss_of(m, x, y).backward()
        lstm = m.lstm
        return {"w": torch.cat([lstm.weight_ih_l0.grad.T, lstm.weight_hh_l0.grad.T]),
                "b": lstm.bias_ih_l0.grad, "wy": m.head.weight.grad.T, "by": m.head.bias.grad}

    def train_step(p, x, y, lr):
        m = build(p)
        opt = torch.optim.SGD([q for q in m.parameters() if q.requires_grad], lr=lr)

        def step():
            opt.zero_grad()
            loss_of(m, x, y).backward()
            opt.step()

        return step

    update.returns_gradient = True  # -D theta
    update.train_step = train_step
    return update


def _jax_lstm_loss(p, x, y):
    import jax
    import jax.numpy as jnp

    w, b, wy, by = p["w"], p["b"], p["wy"], p["by"]
    batch, seq, _ = x.shape
    hid = wy.shape[0]

    def cell(carry, x_t):
        h, c = carry
        i, f, g, o = jax_lstm_gates(w, b, x_t, h, hid)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), h

    zero = jnp.zeros((batch, hid), x.dtype)
    _, h = jax.lax.scan(cell, (zero, zero), jnp.swapaxes(x, 0, 1))   # [S, B, H]
    logits = h @ wy + by
    return -jnp.sum(jnp.swapaxes(y, 0, 1) * jax.nn.log_softmax(logits, axis=-1)) / (batch * seq)


def jax_lstm_bp():
    import jax

    @jax.jit
    def update(p, x, y):
        return jax.tree_util.tree_map(lambda g: -g, jax.grad(_jax_lstm_loss)(p, x, y))

    return update


# ---------------------------------------------------------------------------------------------
# Which peers exist: (model, library) -> {method: builder(steps, rate)}.

PEERS = {
    ("mlp", "pytorch"): {"pc": torch_mlp_fixed, "bp": lambda steps, rate: torch_mlp_bp()},
    ("mlp", "jax"): {"pc": jax_mlp_fixed, "bp": lambda steps, rate: jax_mlp_bp()},
    ("mlp_strict", "pytorch"): {"pc": torch_mlp_strict},
    ("mlp_strict", "jax"): {"pc": jax_mlp_strict},
    # PCX's relaxation: SGD with momentum 0.9 on the states, and a nudged target (beta = 0.5).
    ("mlp_strict_pcx", "jax"): {"pc": lambda steps, rate: jax_mlp_strict(steps, rate, momentum=0.9, beta=0.5)},
    ("cnn_strict", "jax"): {"pc": jax_cnn_strict},
    ("lstm_fixed", "jax"): {"pc": jax_lstm_fixed, "bp": lambda steps, rate: jax_lstm_bp()},
    ("lstm_fixed", "pytorch"): {"bp": lambda steps, rate: torch_lstm_bp()},
}


def random_problem(model, sizes, batch, seed=0):
    """Random parameters (scaled like the files' initialisers) and a batch, as numpy float32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    f32 = np.float32
    if model in ("mlp", "mlp_strict", "mlp_strict_pcx"):
        n = sizes
        p = {}
        for l in range(3):
            p[f"w{l + 1}"] = (rng.standard_normal((n[l], n[l + 1])) * (1.0 / n[l]) ** 0.5).astype(f32)
            p[f"b{l + 1}"] = (0.1 * rng.standard_normal(n[l + 1])).astype(f32)
        x = rng.standard_normal((batch, n[0])).astype(f32)
        y = np.eye(n[3], dtype=f32)[rng.integers(0, n[3], batch)]
    elif model == "cnn_strict":
        shapes = {"k1": (6, 1, 5, 5), "c1": (6,), "k2": (16, 6, 5, 5), "c2": (16,), "w1": (1024, 200),
                  "b1": (200,), "w2": (200, 150), "b2": (150,), "w3": (150, 10), "b3": (10,)}
        fan = {"k1": 25, "k2": 150, "w1": 1024, "w2": 200, "w3": 150}
        p = {k: (rng.standard_normal(s) * ((1.0 / fan[k]) ** 0.5 if k in fan else 0.1)).astype(f32)
             for k, s in shapes.items()}
        x = rng.standard_normal((batch, 1, 28, 28)).astype(f32)
        y = np.eye(10, dtype=f32)[rng.integers(0, 10, batch)]
    elif model == "lstm_fixed":
        seq, voc, hid = sizes
        p = {"w": (0.1 * rng.standard_normal((voc + hid, 4 * hid))).astype(f32),
             "b": (0.1 * rng.standard_normal(4 * hid)).astype(f32),
             "wy": (rng.standard_normal((hid, voc)) * (1.0 / hid) ** 0.5).astype(f32),
             "by": (0.1 * rng.standard_normal(voc)).astype(f32)}
        eye = np.eye(voc, dtype=f32)
        x = eye[rng.integers(0, voc, (batch, seq))]
        y = eye[rng.integers(0, voc, (batch, seq))]
    else:
        raise ValueError(model)
    return p, x, y


def to_library(lib, arrays):
    if lib == "pytorch":
        import torch

        return {k: torch.from_numpy(a.copy()) for k, a in arrays.items()}
    import jax.numpy as jnp

    return {k: jnp.asarray(a) for k, a in arrays.items()}


def bench(model, lib, sizes, batch, steps, rate, lr, iters, warmup=5, methods=None):
    builders = PEERS.get((model, lib))
    if builders and methods:
        builders = {m: b for m, b in builders.items() if m in methods}
    if not builders:
        return {"error": f"no {lib} peer for {model}" + (f" ({','.join(methods)})" if methods else "")}
    try:
        if lib == "pytorch":
            import torch

            torch.set_num_threads(2)
        else:
            import jax  # noqa: F401
    except ImportError as e:
        return {"error": f"not installed ({e.name}); pip install torch 'jax[cpu]'"}
    p, x, y = random_problem(model, sizes, batch)
    arrays = to_library(lib, {**p, "x": x, "y": y})
    x, y = arrays.pop("x"), arrays.pop("y")
    out = {}
    for method, build in builders.items():
        update = build(steps, rate)
        params = dict(arrays) if lib == "jax" else {k: v.clone() for k, v in arrays.items()}
        if lib == "pytorch" and hasattr(update, "train_step"):
            step = update.train_step(params, x, y, lr)
        elif lib == "pytorch":
            alpha = -lr if getattr(update, "returns_gradient", False) else lr

            def step(update=update, params=params, alpha=alpha):
                d = update(params, x, y)
                with torch.no_grad():
                    for k, v in d.items():
                        params[k].add_(v, alpha=alpha)
        else:
            import jax

            @jax.jit
            def train(params, x, y, update=update):
                d = update(params, x, y)
                return {k: v + lr * d[k] for k, v in params.items()}

            state = {"p": params}

            def step(train=train, state=state):
                state["p"] = train(state["p"], x, y)
                jax.block_until_ready(state["p"])
        out[method] = timed(step, iters, warmup)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mlp", choices=sorted(MODELS))
    ap.add_argument("--sizes", help="mlp: n0,n1,n2,n3; lstm_fixed: seq,vocab,hidden")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--rate", type=float)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--libs", default="pytorch,jax")
    ap.add_argument("--methods", help="only these methods (pc, bp), e.g. --methods bp")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    d = MODELS[args.model]
    sizes = args.sizes or d["sizes"]
    sizes = [int(s) for s in sizes.split(",")] if sizes else None
    batch = args.batch or d["batch"]
    steps = args.steps if args.steps is not None else d["steps"]
    rate = args.rate if args.rate is not None else d["rate"]
    results = {}
    for lib in args.libs.split(","):
        results[lib] = bench(args.model, lib, sizes, batch, steps, rate, args.lr, args.iters, args.warmup,
                             args.methods.split(",") if args.methods else None)
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
