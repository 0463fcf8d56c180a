"""The Python module against the CLI, a numpy reference and its own promises.

The CLI binary is `target/release/pcg` (built by `cargo build --release`), or `$PCG`.
"""

import json
import os
import pathlib
import re
import subprocess
import warnings

import numpy as np
import pytest

import pcg

ROOT = pathlib.Path(__file__).resolve().parents[2]
MLP = ROOT / "examples" / "mlp_digits.pcg"
PCG = pathlib.Path(os.environ.get("PCG", ROOT / "target" / "release" / "pcg"))

TINY = """
model tiny {
    input  x: [B, 3]
    target y: [B, 2]
    param  w: [3, 2] = normal(0.5)
    param  b: [2]    = zeros
    let h = tanh(x @ w + b)
    loss 0.5 * sum(square(h - y)) / dim(h, 0)
}

train tiny {
    method    = bp
    optimizer = sgd(lr = 0.1)
    batch = 4   epochs = 1   seed = 3
}
"""


def cli(*args, cwd=ROOT):
    if not PCG.exists():
        pytest.fail(f"{PCG} is missing: run `cargo build --release` first (or set $PCG)")
    done = subprocess.run(
        [str(PCG), *map(str, args)], cwd=cwd, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def tiny_batch(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(4, 3)).astype(np.float32),
        "y": rng.normal(size=(4, 2)).astype(np.float32),
    }


# --- compiling -------------------------------------------------------------------------


def test_compile_exposes_shapes_and_initial_params():
    m = pcg.compile(MLP)
    assert m.name == "mlp"
    assert m.inputs == {"x": (32, 64)}
    assert m.targets == {"y": (32, 10)}
    params = m.params
    assert sorted(params) == ["b1", "b2", "w1", "w2"]
    assert params["w1"].dtype == np.float32 and params["w1"].shape == (64, 64)
    assert np.all(params["b1"] == 0) and np.std(params["w1"]) > 0.05
    # The same seed gives the same initialisation; another seed another one.
    assert np.array_equal(pcg.compile(MLP).params["w1"], params["w1"])
    assert not np.array_equal(pcg.compile(MLP, seed=1).params["w1"], params["w1"])


def test_batch_and_dims_rebind_shapes():
    m = pcg.compile(MLP, batch=8)
    assert m.inputs == {"x": (8, 64)}
    text = TINY.replace("[B, 3]", "[B, K]").replace("[3, 2]", "[K, 2]")
    m = pcg.compile_source(text, dims={"K": 5})
    assert m.inputs["x"] == (4, 5) and m.params["w"].shape == (5, 2)


def test_syntax_error_is_a_compile_error_with_code_and_line():
    source = "model m {\n  input x: [B, 3]\n  let h = x @ @ w\n}\n"
    with pytest.raises(pcg.CompileError) as caught:
        pcg.compile_source(source, name="broken.pcg")
    text = str(caught.value)
    assert re.search(r"error\[E\d{4}\]", text), text
    assert "broken.pcg:3:" in text, text
    assert caught.value.codes and all(re.fullmatch(r"E\d{4}", c) for c in caught.value.codes)


def test_compile_error_text_is_what_pcg_check_prints(tmp_path):
    bad = tmp_path / "bad.pcg"
    bad.write_text("model m {\n  input x: [B, 3]\n  loss sum(q)\n}\n")
    with pytest.raises(pcg.CompileError) as caught:
        pcg.compile(bad)
    done = subprocess.run([str(PCG), "check", str(bad)], capture_output=True, text=True)
    assert done.returncode == 1
    assert str(caught.value).strip() == done.stderr.strip()


def test_missing_file_is_a_compile_error():
    with pytest.raises(pcg.CompileError, match="no_such_model.pcg"):
        pcg.compile("no_such_model.pcg")


# --- gradients -------------------------------------------------------------------------


def test_bp_gradient_matches_a_numpy_reference():
    m = pcg.compile_source(TINY)
    p, b = m.params, tiny_batch()
    loss, grads = m.grad(b, method="bp")
    x, y, w, bias = b["x"].astype(np.float64), b["y"], p["w"], p["b"]
    h = np.tanh(x @ w + bias)
    n = x.shape[0]
    expected_loss = 0.5 * np.sum((h - y) ** 2) / n
    dz = (h - y) / n * (1 - h**2)
    assert abs(loss - expected_loss) < 1e-5 * abs(expected_loss)
    assert rel(grads["w"], x.T @ dz) < 1e-5
    assert rel(grads["b"], dz.sum(axis=0)) < 1e-5


def test_grad_equals_pcg_grad_on_the_same_arrays(tmp_path):
    m = pcg.compile(MLP)
    rng = np.random.default_rng(7)
    params = {k: (v + 0.01 * rng.normal(size=v.shape)).astype(np.float32) for k, v in m.params.items()}
    m.params = params
    batch = {"x": rng.random((32, 64), dtype=np.float32), "y": np.eye(10, dtype=np.float32)[rng.integers(0, 10, 32)]}
    np.savez(tmp_path / "params.npz", **params)
    np.savez(tmp_path / "inputs.npz", **batch)
    cases = [
        ("bp", {}),
        ("pc", {"mode": "strict", "steps": 7, "rate": 0.2}),
        ("pc", {"mode": "fixed", "steps": 5, "rate": 0.3, "momentum": 0.5}),
        # Exact mode with fewer steps than the graph is deep: the CLI's --steps replaces the depth.
        ("pc", {"mode": "exact", "steps": 1}),
    ]
    for i, (method, kwargs) in enumerate(cases):
        out = tmp_path / f"{i}.npz"
        flags = [f"--{k}={v}" for k, v in kwargs.items()]
        printed = cli("grad", MLP, "--method", method, "--params", tmp_path / "params.npz",
                      "--inputs", tmp_path / "inputs.npz", "--out", out, *flags)
        loss, grads = m.grad(batch, method=method, **kwargs)
        assert abs(loss - float(printed.split("=")[1])) <= 1e-6 * abs(loss)
        with np.load(out) as expected:
            assert sorted(expected.files) == sorted(grads)
            for name in grads:
                assert rel(grads[name], expected[name]) < 1e-6, (method, name)


def test_pc_fixed_mode_converges_to_bp():
    m = pcg.compile(MLP)
    _, bp = m.grad(method="bp")
    _, pc = m.grad(method="pc", mode="fixed", steps=200, rate=0.5)
    _, few = m.grad(method="pc", mode="fixed", steps=2, rate=0.5)
    for name in bp:
        assert rel(pc[name], bp[name]) < 1e-4, name
    # Two steps are not enough: the check can fail.
    assert max(rel(few[k], bp[k]) for k in bp) > 1e-2


def test_grad_on_both_backends_agrees():
    m = pcg.compile(MLP)
    _, jit = m.grad(method="pc", mode="strict", steps=5, rate=0.1)
    _, interp = m.grad(method="pc", mode="strict", steps=5, rate=0.1, backend="interp")
    for name in jit:
        assert rel(jit[name], interp[name]) < 1e-5, name


def test_float64_and_integer_inputs_are_converted():
    m = pcg.compile_source(TINY)
    b = tiny_batch()
    loss32, g32 = m.grad(b)
    loss64, g64 = m.grad({k: v.astype(np.float64) for k, v in b.items()})
    assert loss32 == loss64 and all(np.array_equal(g32[k], g64[k]) for k in g32)
    m.grad({"x": np.ones((4, 3), dtype=np.int32), "y": b["y"]})


def test_integer_labels_are_one_hot_targets_in_grad_as_in_fit():
    m = pcg.compile(MLP)
    rng = np.random.default_rng(3)
    x = rng.random((32, 64), dtype=np.float32)
    labels = rng.integers(0, 10, 32)
    loss, grads = m.grad({"x": x, "y": labels})
    expected_loss, expected = m.grad({"x": x, "y": np.eye(10, dtype=np.float32)[labels]})
    assert loss == expected_loss
    assert all(np.array_equal(grads[k], expected[k]) for k in grads)
    with pytest.raises(ValueError, match="class label 10 is outside 0..10"):
        m.grad({"x": x, "y": np.full(32, 10)})


def test_compile_source_shows_its_defaults():
    import inspect

    signature = inspect.signature(pcg.compile_source)
    assert signature.parameters["name"].default == "<source>"
    assert "Ellipsis" not in str(signature)


def test_loops_as_scans_and_unrolled_give_the_same_gradients():
    rnn = ROOT / "examples" / "rnn_digits.pcg"
    scan = pcg.compile(rnn, loops="scan")
    unrolled = pcg.compile(rnn, loops="unroll")
    assert "a scan" in scan.ir().splitlines()[0]
    assert "unrolled" in unrolled.ir().splitlines()[0]
    batch = scan.default_batch()
    loss_s, g_s = scan.grad(batch)
    loss_u, g_u = unrolled.grad(batch)
    assert abs(loss_s - loss_u) <= 1e-5 * abs(loss_u)
    for name in g_u:
        assert rel(g_s[name], g_u[name]) < 1e-5, name
    with pytest.raises(ValueError, match="loops"):
        pcg.compile(rnn, loops="sometimes")


def test_epc_and_state_optimisers_from_keywords():
    m = pcg.compile(ROOT / "examples" / "resnet_deep.pcg")
    batch = m.default_batch()
    _, bp = m.grad(batch, method="bp")
    # ePC's errors reach the first layer within a few steps; strict mode's do not.
    _, epc = m.grad(batch, method="pc", mode="epc", steps=10, rate=0.1, target="nudge(0.1)")
    _, strict = m.grad(batch, method="pc", mode="strict", steps=10, rate=0.1, target="nudge(0.1)")
    assert rel(epc["w_in"], bp["w_in"]) < 0.5
    assert np.abs(strict["w_in"]).max() < 1e-3 * np.abs(bp["w_in"]).max()
    settings = dict(method="pc", mode="strict", steps=5, rate=0.05)
    _, plain = m.grad(batch, **settings)
    _, adam = m.grad(batch, state_optimizer="adam(beta1=0.8)", state_clip=1.0, energy="mean", **settings)
    assert rel(adam["w_out"], plain["w_out"]) > 1e-6
    with pytest.raises(ValueError, match="state optimiser"):
        m.grad(batch, state_optimizer="rmsprop", **settings)


def test_wrong_shape_names_the_input_and_both_shapes():
    m = pcg.compile_source(TINY)
    with pytest.raises(ValueError) as caught:
        m.grad({"x": np.zeros((5, 3), np.float32), "y": np.zeros((4, 2), np.float32)})
    text = str(caught.value)
    assert "`x`" in text and "[5, 3]" in text and "[4, 3]" in text, text


def test_missing_input_and_bad_dtypes_are_refused():
    m = pcg.compile_source(TINY)
    with pytest.raises(ValueError, match="`y`"):
        m.grad({"x": np.zeros((4, 3), np.float32)})
    with pytest.raises(ValueError, match="`w`, which is not an input or a target"):
        m.grad({**tiny_batch(), "w": np.zeros((3, 2))})
    with pytest.raises(TypeError, match="dtype"):
        m.grad({"x": np.array([["a", "b", "c"]] * 4), "y": np.zeros((4, 2))})
    with pytest.raises(TypeError, match="dtype"):
        m.grad({"x": np.zeros((4, 3), np.complex64), "y": np.zeros((4, 2))})
    with pytest.raises(ValueError, match="not finite|NaN|nan"):
        m.grad({"x": np.full((4, 3), np.nan), "y": np.zeros((4, 2))})


def test_precision_and_nodes_are_settings_too():
    m = pcg.compile(MLP)
    _, plain = m.grad(method="pc", mode="strict", steps=10, rate=0.1)
    _, weighted = m.grad(method="pc", mode="strict", steps=10, rate=0.1, precision={"h": 4.0})
    assert rel(weighted["w1"], plain["w1"]) > 1e-3
    assert m.ir("pc", nodes="all") != m.ir("pc")
    with pytest.raises(ValueError, match="did you mean `h`"):
        m.grad(method="pc", precision={"hh": 2.0})
    with pytest.raises(ValueError, match="precision"):
        m.grad(method="pc", precision={"h": -1.0})
    with pytest.raises(ValueError, match="nodes must be one of"):
        m.grad(method="pc", nodes="some")


def test_bad_settings_are_value_errors():
    m = pcg.compile(MLP)
    with pytest.raises(ValueError, match="method must be one of"):
        m.grad(method="backprop")
    with pytest.raises(ValueError, match="mode must be one of"):
        m.grad(method="pc", mode="loose")
    with pytest.raises(ValueError, match="tol"):
        m.grad(method="pc", tol=3.0)
    with pytest.raises(ValueError, match="rate"):
        m.grad(method="pc", rate=-1.0)
    with pytest.raises(ValueError, match="target"):
        m.grad(method="pc", target="push(1)")
    with pytest.raises(TypeError, match="unexpected keyword"):
        m.grad(method="pc", stepz=3)
    with pytest.raises(ValueError):
        pcg.compile(MLP, batch=0)


def test_default_batch_is_the_first_batch_of_the_files_data():
    m = pcg.compile(MLP)
    batch = m.default_batch()
    assert batch["x"].shape == (32, 64) and np.all(batch["y"].sum(axis=1) == 1)
    assert m.grad(batch, method="bp")[0] == m.grad(method="bp")[0]
    # A model without data gets seeded random data, and says so only when it had data.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pcg.compile_source(TINY).grad()


# --- training --------------------------------------------------------------------------


def test_step_updates_the_params_by_the_optimiser():
    m = pcg.compile_source(TINY)
    b = tiny_batch()
    before = m.params
    _, g = m.grad(b, method="bp")
    report = m.step(b)
    after = m.params
    assert set(report) == {"loss", "energy", "relaxation_steps"}
    for k in before:
        assert np.allclose(after[k], before[k] - 0.1 * g[k], atol=1e-6), k
    # The learning rate of one call, and the steps taken on from the new parameters.
    m.step(b, lr=0.0)
    assert all(np.array_equal(m.params[k], after[k]) for k in after)


def test_setting_params_is_checked_and_takes_effect():
    m = pcg.compile_source(TINY)
    zero = {"w": np.zeros((3, 2), np.float32)}
    m.params = zero
    assert np.all(m.params["w"] == 0)
    m.step(tiny_batch())
    assert not np.all(m.params["w"] == 0)
    with pytest.raises(ValueError, match="shape"):
        m.params = {"w": np.zeros((2, 3))}
    with pytest.raises(ValueError, match="no parameter `v`"):
        m.params = {"v": np.zeros(1)}


def test_a_diverging_step_raises_and_keeps_the_params():
    m = pcg.compile(MLP)
    before = m.params
    with pytest.raises(pcg.DivergenceError) as caught:
        m.step(method="pc", mode="strict", steps=60, rate=40.0)
    e = caught.value
    assert e.what and "not finite" in str(e)
    # A name (of a node, a parameter, or the loss or energy), not a phrase.
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", e.what), e.what
    assert e.relaxation_step is None or e.relaxation_step >= 1
    after = m.params
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_fit_ends_where_pcg_run_ends():
    m = pcg.compile(MLP)
    history = m.fit(data="digits", epochs=20)
    assert len(history) == 20 and m.epochs_done == 20
    printed = cli("run", MLP, "--quiet", "--epochs", "20")
    acc = float(re.search(r"test_acc=([0-9.]+)", printed).group(1))
    loss = float(re.search(r"test_loss=([0-9.]+)", printed).group(1))
    assert round(history[-1]["test_acc"], 4) == acc
    assert abs(history[-1]["test_loss"] - loss) <= 1e-5
    assert history[-1]["test_acc"] > 0.8


def test_fit_on_arrays_and_evaluate():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 64)).astype(np.float32)
    # Ten classes, by which tenth of the range the first feature falls in.
    labels = np.digitize(x[:, 0], np.quantile(x[:, 0], np.linspace(0.1, 0.9, 9)))
    m = pcg.compile(MLP)
    history = m.fit(x=x, y=labels, epochs=30, method="bp", lr=0.05)
    assert [h["epoch"] for h in history] == list(range(1, 31))
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    scores = m.evaluate(x_test=x, y_test=labels)
    assert scores["examples"] == 200 and scores["test_acc"] > 0.3
    assert abs(scores["test_loss"] - history[-1]["test_loss"]) < 1e-5
    with pytest.raises(ValueError, match="y"):
        m.fit(x=x, y=labels[:10], epochs=1)
    with pytest.raises(ValueError, match="fewer than one batch"):
        m.fit(x=x[:10], y=labels[:10], epochs=1)
    with pytest.raises(ValueError, match="not both"):
        m.fit(data="digits", x=x, y=labels)


def test_fit_goes_on_from_where_it_stopped():
    once, twice = pcg.compile(MLP), pcg.compile(MLP)
    once.fit(epochs=2, max_batches=5)
    twice.fit(epochs=1, max_batches=5)
    twice.fit(epochs=1, max_batches=5)
    for k, v in once.params.items():
        assert np.array_equal(v, twice.params[k]), k


def test_save_load_and_the_cli_read_the_same_checkpoint(tmp_path):
    m = pcg.compile(MLP)
    m.fit(epochs=1, max_batches=10)
    path = tmp_path / "ckpt.npz"
    m.save(path)
    ours = m.evaluate()
    printed = cli("eval", MLP, "--params", path)
    assert abs(float(re.search(r"test_loss=([0-9.]+)", printed).group(1)) - ours["test_loss"]) < 1e-5
    fresh = pcg.compile(MLP)
    fresh.load(path)
    assert fresh.epochs_done == 1
    for k, v in m.params.items():
        assert np.array_equal(v, fresh.params[k]), k
    # The CLI resumes from the module's checkpoint, and the module from a plain .npz.
    cli("run", MLP, "--quiet", "--resume", path, "--epochs", "2", "--max-batches", "10")
    np.savez(tmp_path / "plain.npz", **m.params)
    other = pcg.compile(MLP, seed=5)
    other.load(tmp_path / "plain.npz")
    assert np.array_equal(other.params["w1"], m.params["w1"])
    with pytest.raises(OSError):
        other.load(tmp_path / "absent.npz")
    np.savez(tmp_path / "wrong.npz", w1=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="w1"):
        other.load(tmp_path / "wrong.npz")


# --- inspection ------------------------------------------------------------------------


def test_gradcheck_matches_the_clis_json():
    m = pcg.compile(MLP)
    report = m.gradcheck(mode="fixed", steps=30, rate=0.5)
    expected = json.loads(cli("gradcheck", MLP, "--json", "--mode", "fixed", "--steps", "30", "--rate", "0.5"))
    assert report["model"] == "mlp" and report["steps"] == 30
    assert abs(report["max_rel_err"] - expected["max_rel_err"]) <= 1e-9 + 1e-6 * expected["max_rel_err"]
    for p in expected["params"]:
        ours = report["params"][p["name"]]
        assert len(ours["rel_err"]) == len(p["trace"])
        assert np.allclose(ours["rel_err"], [t["rel_err"] for t in p["trace"]], rtol=1e-6)
    assert len(report["energy"]) == len(expected["energy"])


def test_ir_is_what_pcg_ir_prints():
    m = pcg.compile(MLP)
    for stage in ["ir", "grad", "pc"]:
        assert m.ir(stage) == cli("ir", MLP, "--stage", stage)
    assert m.ir("pc", mode="strict", steps=3) == cli("ir", MLP, "--stage", "pc", "--mode", "strict", "--steps", "3")
    assert m.ir("ir", "dot").startswith("digraph")
    assert m.ir("ast") == cli("ir", MLP, "--stage", "ast")
    assert "buffers" in m.ir("plan") or "buffer" in m.ir("plan")
    with pytest.raises(ValueError, match="stage must be one of"):
        m.ir("bytecode")


def test_repr_and_version():
    m = pcg.compile(MLP)
    assert repr(m).startswith("<pcg.Model mlp")
    assert re.fullmatch(r"\d+\.\d+\.\d+", pcg.__version__)


def test_compute_releases_the_interpreters_lock():
    import threading
    import time

    m = pcg.compile(MLP)
    inside = {}

    def work():
        inside["start"] = time.perf_counter()
        m.grad(method="pc", mode="strict", steps=3000, rate=0.05, backend="interp")
        inside["end"] = time.perf_counter()

    ticks = []
    worker = threading.Thread(target=work)
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    worker.join()
    during = [t for t in ticks if inside["start"] < t < inside["end"]]
    # With the lock held for the whole call, this thread could not have run in between.
    assert inside["end"] - inside["start"] > 0.05
    assert len(during) >= 10, (len(during), inside["end"] - inside["start"])


AUTOENCODER = """
use nn

model ae {
    input  pixels: [B, 64]
    param  w1: [64, 8] = xavier
    param  b1: [8]
    param  w2: [8, 64] = xavier
    param  b2: [64]
    let code = tanh(pixels @ w1 + b1)
    loss mse(sigmoid(code @ w2 + b2), pixels)
}

train ae {
    optimizer = adam(lr = 0.01)
    batch = 16   epochs = 2
}
"""


def test_a_model_without_a_target_fits_on_inputs_alone():
    m = pcg.compile_source(AUTOENCODER)
    assert m.targets == {}
    x = np.random.default_rng(0).random((160, 64), dtype=np.float32)
    history = m.fit(x=x, epochs=3)
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < losses[0], losses
    assert history[-1]["test_acc"] is None
    with pytest.raises(ValueError, match="inputs"):
        m.fit(y=x)


def test_predict_is_the_forward_pass_on_inputs_alone():
    m = pcg.compile_source(TINY)
    w, b = m.params["w"], m.params["b"]
    x = np.random.default_rng(1).normal(size=(7, 3)).astype(np.float32)
    for backend in ["jit", "interp"]:
        # The file's batch is 4; the inputs hold 7 rows, and no target.
        out = m.predict({"x": x}, backend=backend)
        assert list(out) == ["h"]
        assert rel(out["h"], np.tanh(x @ w + b)) < 1e-6
    with pytest.raises(ValueError, match="no array named `x`"):
        m.predict({"z": x})
    with pytest.raises(ValueError, match="x"):
        m.predict({"x": x[:, :2]})


def test_predict_equals_pcg_predict(tmp_path):
    m = pcg.compile(MLP)
    params, inputs, out = tmp_path / "p.npz", tmp_path / "x.npz", tmp_path / "y.npz"
    np.savez(params, **m.params)
    x = np.random.default_rng(2).random(size=(5, 64)).astype(np.float32)
    np.savez(inputs, x=x)
    cli("predict", MLP, "--params", params, "--inputs", inputs, "--out", out)
    written = np.load(out)
    found = m.predict({"x": x})
    assert sorted(found) == sorted(written.files)
    for name in found:
        assert rel(found[name], written[name]) < 1e-6
