"""ONNX in and out against ONNX Runtime: each fixture of tests/onnx imported (`from_onnx`),
predicted and exported, the exported file run by ONNX Runtime; and PyTorch modules through
`from_torch` where torch is installed.
"""

import pathlib
import sys

import numpy as np
import pytest

import pcg

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = sorted(p.stem for p in (ROOT / "tests" / "onnx").glob("*.npz"))


def close(found, expected, tol=1e-5):
    """Equal to `tol` relative to the largest element of `expected`."""
    assert found.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-30)
    assert float(np.abs(found - expected).max()) <= tol * scale


def feed(session, arrays):
    """`arrays` (in the order of the session's inputs) converted to the types it declares."""
    types = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
    return {
        i.name: np.asarray(a).astype(types[i.type])
        for i, a in zip(session.get_inputs(), arrays)
    }


def reference(name):
    """The fixture's ONNX Runtime session, its inputs (in order) and its output."""
    session = ort.InferenceSession(str(ROOT / "tests" / "onnx" / f"{name}.onnx"))
    data = np.load(ROOT / "tests" / "onnx" / f"{name}.npz")
    inputs = [data[i.name] for i in session.get_inputs()]
    (output,) = session.run(None, feed(session, inputs))
    return session, inputs, output


def test_the_fixtures_are_there():
    assert {"mlp", "cnn"} <= set(FIXTURES)


@pytest.mark.parametrize("name", FIXTURES)
def test_from_onnx_predicts_what_onnx_runtime_computes(name):
    _, inputs, expected = reference(name)
    m = pcg.from_onnx(ROOT / "tests" / "onnx" / f"{name}.onnx")
    (found,) = m.predict(dict(zip(m.inputs, inputs))).values()
    close(found, expected)


@pytest.mark.parametrize("name", FIXTURES)
def test_an_exported_fixture_runs_in_onnx_runtime_as_the_original(name, tmp_path):
    original, inputs, expected = reference(name)
    m = pcg.from_onnx(ROOT / "tests" / "onnx" / f"{name}.onnx")
    path = tmp_path / f"{name}.onnx"
    m.export(path, batch=len(inputs[0]))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    # The initializers keep the original's names.
    source = onnx.load(str(ROOT / "tests" / "onnx" / f"{name}.onnx"))
    before = {t.name for t in source.graph.initializer}
    after = {t.name for t in model.graph.initializer}
    assert after and after <= before
    exported = ort.InferenceSession(str(path))
    (found,) = exported.run(None, feed(exported, inputs))
    close(found, expected)


def test_export_writes_the_current_parameters(tmp_path):
    _, inputs, original = reference("mlp")
    m = pcg.from_onnx(ROOT / "tests" / "onnx" / "mlp.onnx")
    m.params = {"fc2_bias": m.params["fc2_bias"] + 0.5}
    path = tmp_path / "changed.onnx"
    m.export(path, batch=len(inputs[0]))
    session = ort.InferenceSession(str(path))
    (found,) = session.run(None, feed(session, inputs))
    close(found, m.predict({"input_": inputs[0]})["logits"])
    close(found, original + 0.5)


def test_from_onnx_refuses_what_the_language_cannot_express():
    with pytest.raises(ValueError, match="1-D and 2-D convolutions"):
        pcg.from_onnx(ROOT / "tests" / "onnx" / "unsupported_conv3d.onnx")
    with pytest.raises(ValueError, match="loss"):
        pcg.from_onnx(ROOT / "tests" / "onnx" / "mlp.onnx", loss="hinge")


def test_from_torch_without_torch_says_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="needs PyTorch"):
        pcg.from_torch(object(), np.zeros((1, 2), np.float32))


def test_from_torch_predicts_what_the_module_computes(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 6 * 6, 4),
        torch.nn.Tanh(),
    )
    x = torch.randn(5, 1, 6, 6)
    m = pcg.from_torch(net, x, loss="cross_entropy")
    with torch.no_grad():
        expected = net(x).numpy()
    close(m.predict({"x": x.numpy()})["prediction"], expected)
    assert net.training, "the module is put back in training mode"
    path = tmp_path / "net.onnx"
    m.export(path, batch=5)
    session = ort.InferenceSession(str(path))
    close(session.run(None, {"x": x.numpy()})[0], expected)
