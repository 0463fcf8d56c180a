"""Builds the ONNX fixtures of `tests/onnx_import.rs` and ONNX Runtime's outputs for them.

Each model is written with `onnx.helper` (no PyTorch needed) in the shapes and names that
`torch.onnx.export` gives (initializers `fc1.weight`, nodes `/fc1/Gemm`), with seeded random
weights. For each model `tests/onnx/NAME.onnx` this writes `tests/onnx/NAME.npz` holding the
inputs of a fixed batch under their ONNX names and ONNX Runtime's output under the output's
name, so the Rust tests compare without Python. The models refused by import (ops and
attributes the language lacks) have no `.npz`.

    python3 -m venv /tmp/onnx-venv && /tmp/onnx-venv/bin/pip install onnx onnxruntime numpy
    /tmp/onnx-venv/bin/python scripts/onnx_fixtures.py
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent.parent / "tests" / "onnx"
OPSET = 17
rng = np.random.default_rng(0)


def weight(name, *shape, scale=0.5):
    values = (rng.standard_normal(shape) * scale).astype(np.float32)
    return numpy_helper.from_array(values, name)


def ints(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def tensor(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def save(name, graph, inputs=None):
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="pcg-fixtures",
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=inputs is not None)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.onnx"
    onnx.save(model, path)
    if inputs is None:
        return
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, inputs)
    arrays = dict(inputs)
    arrays[graph.output[0].name] = output
    np.savez(OUT / f"{name}.npz", **arrays)
    print(f"{path.name}: output {output.shape}")


def mlp():
    """PyTorch's nn.Linear → ReLU → nn.Linear, batch left open: Gemm with transB = 1."""
    nodes = [
        helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["/fc1/Gemm_output_0"],
                         name="/fc1/Gemm", alpha=1.0, beta=1.0, transB=1),
        helper.make_node("Relu", ["/fc1/Gemm_output_0"], ["/act/Relu_output_0"], name="/act/Relu"),
        helper.make_node("Gemm", ["/act/Relu_output_0", "fc2.weight", "fc2.bias"], ["logits"],
                         name="/fc2/Gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [tensor("input", ["batch", 20])], [tensor("logits", ["batch", 10])],
        [weight("fc1.weight", 32, 20), weight("fc1.bias", 32),
         weight("fc2.weight", 10, 32), weight("fc2.bias", 10)],
    )
    x = rng.standard_normal((3, 20)).astype(np.float32)
    save("mlp", graph, {"input": x})


def tanh_matmul():
    """MatMul + Add + Tanh with a fixed batch of 4, scalar constants, Sigmoid, Softmax."""
    half = helper.make_node("Constant", [], ["half"], value=numpy_helper.from_array(
        np.array(0.5, dtype=np.float32)))
    nodes = [
        half,
        helper.make_node("MatMul", ["x", "w1"], ["h_pre"], name="layer1/matmul"),
        helper.make_node("Add", ["h_pre", "b1"], ["h_biased"], name="layer1/add"),
        helper.make_node("Tanh", ["h_biased"], ["h"], name="layer1/tanh"),
        helper.make_node("Mul", ["h", "half"], ["h_half"], name="scale"),
        helper.make_node("Sigmoid", ["h_half"], ["gate"], name="gate"),
        helper.make_node("Mul", ["h", "gate"], ["gated"], name="gated"),
        helper.make_node("Gemm", ["gated", "w2", "b2"], ["z"], name="layer2/gemm", alpha=2.0),
        helper.make_node("LeakyRelu", ["z"], ["z_act"], name="act", alpha=0.1),
        helper.make_node("Softmax", ["z_act"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tanh_matmul", [tensor("x", [4, 8])], [tensor("probs", [4, 3])],
        [weight("w1", 8, 16), weight("b1", 16), weight("w2", 16, 3), weight("b2", 3)],
    )
    x = rng.standard_normal((4, 8)).astype(np.float32)
    save("tanh_matmul", graph, {"x": x})


def cnn():
    """Conv → ReLU → MaxPool → Conv → LeakyReLU, flattened by a shape computation as
    `x.view(x.size(0), -1)` exports it, joined with a global average pool, then a Gemm."""
    nodes = [
        helper.make_node("Conv", ["image", "conv1.weight", "conv1.bias"], ["c1"],
                         name="/conv1/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=[1, 1], dilations=[1, 1], group=1),
        helper.make_node("Relu", ["c1"], ["r1"], name="/relu1/Relu"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="/pool/MaxPool",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight"], ["c2"], name="/conv2/Conv",
                         kernel_shape=[3, 3]),
        helper.make_node("LeakyRelu", ["c2"], ["r2"], name="/relu2/LeakyRelu", alpha=0.1),
        helper.make_node("Shape", ["r2"], ["shape"], name="/Shape"),
        helper.make_node("Constant", [], ["zero"], name="/Constant",
                         value=numpy_helper.from_array(np.array(0, dtype=np.int64))),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], name="/Gather", axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"], name="/Unsqueeze"),
        helper.make_node("Concat", ["batch1", "minus_one"], ["flat_shape"], name="/Concat", axis=0),
        helper.make_node("Reshape", ["r2", "flat_shape"], ["flat"], name="/Reshape"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="/gap/GlobalAveragePool"),
        helper.make_node("Flatten", ["gap"], ["gap_flat"], name="/gap/Flatten", axis=1),
        helper.make_node("Concat", ["flat", "gap_flat"], ["features"], name="/features/Concat", axis=1),
        helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["logits"], name="/fc/Gemm",
                         transB=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [tensor("image", ["N", 1, 8, 8])], [tensor("logits", ["N", 5])],
        [weight("conv1.weight", 4, 1, 3, 3), weight("conv1.bias", 4),
         weight("conv2.weight", 6, 4, 3, 3), weight("fc.weight", 5, 30), weight("fc.bias", 5),
         ints("axes0", [0]), ints("minus_one", [-1])],
    )
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    save("cnn", graph, {"image": x})


def layers():
    """LayerNormalization (the stdlib's and written out), HardSwish, a Reshape with a 0 (copy) entry, Transpose, Slice,
    ReduceMean, Clip, a Gather of consecutive indices and Pow."""
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln.weight", "ln.bias"], ["normed"],
                         name="/ln/LayerNormalization", epsilon=1e-5, axis=-1),
        helper.make_node("MatMul", ["normed", "proj.weight"], ["proj"], name="/proj/MatMul"),
        helper.make_node("HardSwish", ["proj"], ["act"], name="/act/HardSwish"),
        helper.make_node("Reshape", ["act", "grid_shape"], ["grid"], name="/Reshape"),
        helper.make_node("Transpose", ["grid"], ["grid_t"], name="/Transpose", perm=[0, 2, 1]),
        helper.make_node("Slice", ["grid_t", "one", "three", "one"], ["rows"], name="/Slice"),
        helper.make_node("ReduceMean", ["rows"], ["row_mean"], name="/ReduceMean", axes=[1],
                         keepdims=0),
        helper.make_node("Clip", ["row_mean", "low", "high"], ["clipped"], name="/Clip"),
        helper.make_node("Gather", ["normed", "middle"], ["picked"], name="/Gather", axis=1),
        helper.make_node("LayerNormalization", ["picked", "ln2.weight"], ["picked_normed"],
                         name="/ln2/LayerNormalization", epsilon=1e-3, axis=1),
        helper.make_node("Pow", ["picked_normed", "two"], ["squared"], name="/Pow"),
        helper.make_node("Add", ["clipped", "squared"], ["out"], name="/Add"),
    ]
    graph = helper.make_graph(
        nodes, "layers", [tensor("x", ["batch", 12])], [tensor("out", ["batch", 4])],
        [weight("ln.weight", 12), weight("ln.bias", 12), weight("proj.weight", 12, 16, scale=1.0),
         weight("ln2.weight", 4),
         ints("grid_shape", [0, 4, 4]), ints("one", [1]), ints("three", [3]),
         ints("middle", [2, 3, 4, 5]),
         numpy_helper.from_array(np.array(-0.2, dtype=np.float32), "low"),
         numpy_helper.from_array(np.array(0.3, dtype=np.float32), "high"),
         numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )
    x = rng.standard_normal((3, 12)).astype(np.float32)
    save("layers", graph, {"x": x})


def embedding():
    """nn.Embedding over integer ids (a Gather from the table), averaged over the sequence.
    The `.npz` holds the ids as float32, the numbers the `.pcg` input takes."""
    nodes = [
        helper.make_node("Gather", ["embed.weight", "ids"], ["vectors"], name="/embed/Gather",
                         axis=0),
        helper.make_node("ReduceMean", ["vectors"], ["pooled"], name="/ReduceMean", axes=[1],
                         keepdims=0),
        helper.make_node("Gemm", ["pooled", "head.weight", "head.bias"], ["scores"],
                         name="/head/Gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 5])],
        [tensor("scores", ["batch", 3])],
        [weight("embed.weight", 7, 4), weight("head.weight", 3, 4), weight("head.bias", 3)],
    )
    ids = rng.integers(0, 7, size=(2, 5)).astype(np.int64)
    save("embedding", graph, {"ids": ids})
    arrays = dict(np.load(OUT / "embedding.npz"))
    arrays["ids"] = ids.astype(np.float32)
    np.savez(OUT / "embedding.npz", **arrays)


def unsupported_op():
    """An op the language has no counterpart for."""
    nodes = [
        helper.make_node("Relu", ["scores"], ["positive"], name="/relu/Relu"),
        helper.make_node("NonMaxSuppression", ["boxes", "positive"], ["selected"], name="/nms"),
    ]
    graph = helper.make_graph(
        nodes, "nms", [tensor("boxes", [1, 4, 4]), tensor("scores", [1, 1, 4])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
    )
    save("unsupported_nms", graph)


def unsupported_attribute():
    """A 3-D convolution: the language's convolutions are 1-D and 2-D."""
    nodes = [
        helper.make_node("Conv", ["volume", "conv.weight"], ["y"], name="/conv/Conv",
                         kernel_shape=[3, 3, 3]),
    ]
    graph = helper.make_graph(
        nodes, "conv3d", [tensor("volume", ["N", 2, 5, 5, 5])], [tensor("y", ["N", 2, 3, 3, 3])],
        [weight("conv.weight", 2, 2, 3, 3, 3)],
    )
    save("unsupported_conv3d", graph)


def head(nodes, features, channels, classes, prefix):
    """A global average pool, flattened, into a Gemm: the classifier closing a fixture."""
    nodes += [
        helper.make_node("GlobalAveragePool", [features], [f"{prefix}_gap"], name=f"/{prefix}/gap"),
        helper.make_node("Flatten", [f"{prefix}_gap"], [f"{prefix}_flat"], name=f"/{prefix}/flat",
                         axis=1),
        helper.make_node("Gemm", [f"{prefix}_flat", f"{prefix}.weight", f"{prefix}.bias"],
                         ["logits"], name=f"/{prefix}/Gemm", transB=1),
    ]
    return [weight(f"{prefix}.weight", classes, channels), weight(f"{prefix}.bias", classes)]


def conv_options():
    """Conv with per-axis strides, uneven pads, dilations and groups (with a bias); a
    depthwise Conv; a ConvTranspose with stride, uneven pads, output_padding and a bias."""
    nodes = [
        helper.make_node("Conv", ["image", "g.weight", "g.bias"], ["grouped"], name="/g/Conv",
                         kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 2, 1],
                         dilations=[1, 2], group=2),
        helper.make_node("Tanh", ["grouped"], ["t"], name="/t/Tanh"),
        helper.make_node("Conv", ["t", "dw.weight", "dw.bias"], ["depthwise"], name="/dw/Conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=6),
        helper.make_node("ConvTranspose", ["depthwise", "up.weight", "up.bias"], ["up"],
                         name="/up/ConvTranspose", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 0, 1, 1], output_padding=[1, 0]),
    ]
    inits = [weight("g.weight", 6, 2, 3, 2), weight("g.bias", 6),
             weight("dw.weight", 6, 1, 3, 3), weight("dw.bias", 6),
             weight("up.weight", 6, 3, 3, 3), weight("up.bias", 3)]
    inits += head(nodes, "up", 3, 4, "fc")
    graph = helper.make_graph(
        nodes, "conv_options", [tensor("image", ["N", 4, 9, 8])], [tensor("logits", ["N", 4])],
        inits,
    )
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    save("conv_options", graph, {"image": x})


def pools():
    """MaxPool as ResNet's stem has it (3, stride 2, pads 1); a dilated MaxPool of an uneven
    window in ceiling mode; AveragePool padded in ceiling mode counting the padding, and padded
    unevenly without counting it; each globally averaged, then concatenated."""
    nodes = [
        helper.make_node("Conv", ["image", "c.weight"], ["c"], name="/c/Conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c"], ["m1"], name="/m1/MaxPool", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c"], ["m2"], name="/m2/MaxPool", kernel_shape=[2, 3],
                         strides=[2, 1], dilations=[2, 1], ceil_mode=1),
        helper.make_node("AveragePool", ["c"], ["a1"], name="/a1/AveragePool",
                         kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
                         count_include_pad=1),
        helper.make_node("AveragePool", ["c"], ["a2"], name="/a2/AveragePool",
                         kernel_shape=[3, 2], strides=[2, 2], pads=[1, 1, 0, 0]),
    ]
    pooled = []
    for name in ["m1", "m2", "a1", "a2"]:
        nodes.append(helper.make_node("GlobalMaxPool" if name == "m2" else "GlobalAveragePool",
                                      [name], [f"{name}_g"], name=f"/{name}/global"))
        nodes.append(helper.make_node("Flatten", [f"{name}_g"], [f"{name}_f"],
                                      name=f"/{name}/Flatten", axis=1))
        pooled.append(f"{name}_f")
    nodes.append(helper.make_node("Concat", pooled, ["all"], name="/Concat", axis=1))
    nodes.append(helper.make_node("Gemm", ["all", "fc.weight", "fc.bias"], ["logits"],
                                  name="/fc/Gemm", transB=1))
    graph = helper.make_graph(
        nodes, "pools", [tensor("image", ["N", 2, 7, 8])], [tensor("logits", ["N", 3])],
        [weight("c.weight", 3, 2, 3, 3), weight("fc.weight", 3, 12), weight("fc.bias", 3)],
    )
    x = rng.standard_normal((2, 2, 7, 8)).astype(np.float32)
    save("pools", graph, {"image": x})


def batchnorm_gelu():
    """Conv → BatchNormalization (running statistics) → the exact GELU as PyTorch exports it
    at opset 17 (Div, Erf, Add, Mul, Mul) → a global average pool and a Gemm."""
    def constant(name, value):
        return helper.make_node("Constant", [], [name], name=f"/{name}",
                                value=numpy_helper.from_array(np.array(value, dtype=np.float32)))
    nodes = [
        helper.make_node("Conv", ["image", "conv.weight", "conv.bias"], ["c"], name="/conv/Conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization",
                         ["c", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"],
                         ["b"], name="/bn/BatchNormalization", epsilon=1e-5, momentum=0.9),
        constant("sqrt2", np.sqrt(2.0)), constant("one", 1.0), constant("half", 0.5),
        helper.make_node("Div", ["b", "sqrt2"], ["scaled"], name="/act/Div"),
        helper.make_node("Erf", ["scaled"], ["erf"], name="/act/Erf"),
        helper.make_node("Add", ["erf", "one"], ["cdf2"], name="/act/Add"),
        helper.make_node("Mul", ["b", "cdf2"], ["prod"], name="/act/Mul"),
        helper.make_node("Mul", ["prod", "half"], ["g"], name="/act/Mul_1"),
    ]
    var = (np.abs(rng.standard_normal(5)) + 0.5).astype(np.float32)
    inits = [weight("conv.weight", 5, 3, 3, 3), weight("conv.bias", 5),
             weight("bn.weight", 5), weight("bn.bias", 5), weight("bn.running_mean", 5),
             numpy_helper.from_array(var, "bn.running_var")]
    inits += head(nodes, "g", 5, 4, "fc")
    graph = helper.make_graph(
        nodes, "batchnorm_gelu", [tensor("image", ["N", 3, 6, 6])], [tensor("logits", ["N", 4])],
        inits,
    )
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    save("batchnorm_gelu", graph, {"image": x})


def recurrent(op, name, **attrs):
    """A recurrent layer as PyTorch exports one with batch_first: Transpose to [S, B, I], the
    layer (ONNX's gate order, with biases and an initial state), Squeeze of the direction
    axis, Transpose back, then the mean over the steps into a Gemm."""
    gates = 4 if op == "LSTM" else 3
    hidden, features, steps = 4, 3, 5
    inputs = ["xs", "W", "R", "B", "", "h0"]
    nodes = [
        helper.make_node("Transpose", ["x"], ["xs"], name="/Transpose", perm=[1, 0, 2]),
        helper.make_node(op, inputs, ["Y"], name=f"/rnn/{op}", hidden_size=hidden, **attrs),
        helper.make_node("Squeeze", ["Y", "axis1"], ["Ys"], name="/Squeeze"),
        helper.make_node("Transpose", ["Ys"], ["Yb"], name="/Transpose_1", perm=[1, 0, 2]),
        helper.make_node("ReduceMean", ["Yb"], ["pooled"], name="/ReduceMean", axes=[1],
                         keepdims=0),
        helper.make_node("Gemm", ["pooled", "head.weight", "head.bias"], ["out"],
                         name="/head/Gemm", transB=1),
    ]
    h0 = numpy_helper.from_array(
        (rng.standard_normal((1, 2, hidden)) * 0.5).astype(np.float32), "h0")
    graph = helper.make_graph(
        nodes, name, [tensor("x", [2, steps, features])], [tensor("out", [2, 3])],
        [weight("W", 1, gates * hidden, features), weight("R", 1, gates * hidden, hidden),
         weight("B", 1, 2 * gates * hidden), h0, ints("axis1", [1]),
         weight("head.weight", 3, hidden), weight("head.bias", 3)],
    )
    x = rng.standard_normal((2, steps, features)).astype(np.float32)
    save(name, graph, {"x": x})


def split():
    """Split by given sizes and into equal parts (as `torch.chunk` exports), each part its own
    function, joined again."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="/MatMul"),
        helper.make_node("Split", ["h", "sizes"], ["a", "b"], name="/Split", axis=1),
        helper.make_node("Tanh", ["a"], ["ta"], name="/Tanh"),
        helper.make_node("Split", ["b"], ["b1", "b2"], name="/Split_1", axis=1),
        helper.make_node("Sigmoid", ["b1"], ["sb"], name="/Sigmoid"),
        helper.make_node("Mul", ["sb", "b2"], ["gated"], name="/Mul"),
        helper.make_node("Concat", ["ta", "gated"], ["out"], name="/Concat", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "split", [tensor("x", ["batch", 6])], [tensor("out", ["batch", 8])],
        [weight("w", 6, 12), ints("sizes", [4, 8])],
    )
    x = rng.standard_normal((3, 6)).astype(np.float32)
    save("split", graph, {"x": x})


if __name__ == "__main__":
    mlp()
    tanh_matmul()
    cnn()
    layers()
    embedding()
    unsupported_op()
    unsupported_attribute()
    conv_options()
    pools()
    batchnorm_gelu()
    recurrent("LSTM", "lstm")
    recurrent("GRU", "gru", linear_before_reset=0)
    split()
