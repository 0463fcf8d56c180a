"""PyTorch modules into pcg, through ONNX: `torch.onnx.export` to a temporary file, then
`from_onnx`."""

import inspect
import os
import tempfile
import warnings
from typing import Any

from ._pcg import Model, from_onnx


def from_torch(module: Any, example_input: Any, loss: str = "mse", target: str = "y") -> Model:
    """Exports a PyTorch module with `torch.onnx.export` and imports it as a `Model` whose
    parameters are the module's weights.

    `example_input` is a tensor (or a tuple of tensors, one per input of `forward`) of the
    shapes the model takes; axis 0 is the batch, left open in the export. The module is
    exported in eval mode (dropout off, batch norm on its running statistics) at opset 17,
    its inputs named `x` (`x0`, `x1`, ... for several) and its output `prediction`. `loss`
    and `target` are those of `from_onnx`. Raises `ImportError` when torch is not installed.
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "pcg.from_torch needs PyTorch (`pip install torch`); without it, export the "
            "module to ONNX elsewhere and use pcg.from_onnx"
        ) from e
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    names = ["x"] if len(inputs) == 1 else [f"x{i}" for i in range(len(inputs))]
    options = {
        "input_names": names,
        "output_names": ["prediction"],
        "dynamic_axes": {name: {0: "batch"} for name in names + ["prediction"]},
        "opset_version": 17,
        # Batch norms stay batch norms (their statistics `frozen`), and every initializer
        # keeps its module name: folding would merge them into the convolutions.
        "do_constant_folding": False,
    }
    # The TorchScript exporter: newer torch defaults to the dynamo one, whose graphs differ.
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False
    was_training = module.training
    module.eval()
    try:
        with tempfile.TemporaryDirectory() as folder:
            name = type(module).__name__.lower() or "model"
            path = os.path.join(folder, f"{name}.onnx")
            with torch.no_grad(), warnings.catch_warnings():
                # The TorchScript exporter is chosen above on purpose; its deprecation notice
                # is not the caller's to act on.
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(module, inputs, path, **options)
            return from_onnx(path, loss=loss, target=target)
    finally:
        module.train(was_training)


__all__ = ["from_torch"]
