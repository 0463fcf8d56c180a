"""pcg from Python: compile `.pcg` models and train them by predictive coding or backprop on
numpy arrays.

    import numpy as np, pcg
    m = pcg.compile("examples/mlp_digits.pcg")
    loss, grads = m.grad(method="pc", mode="fixed", steps=20, rate=0.1)
    history = m.fit(epochs=5)
    print(m.evaluate())

Models come from ONNX files and PyTorch modules too, and go back to ONNX:

    m = pcg.from_onnx("model.onnx", loss="cross_entropy")   # or pcg.from_torch(module, x)
    m.predict({"x": x})                                     # {"prediction": ...}
    m.export("trained.onnx")

The compiler, the predictive-coding transform and the JIT are those of the `pcg` command; the
same files, the same numbers. See `help(pcg.Model)` for every call.
"""

from ._pcg import (
    CompileError,
    DivergenceError,
    Model,
    __version__,
    compile,
    compile_source,
    from_onnx,
)
from ._torch import from_torch

__all__ = [
    "CompileError",
    "DivergenceError",
    "Model",
    "__version__",
    "compile",
    "compile_source",
    "from_onnx",
    "from_torch",
]
