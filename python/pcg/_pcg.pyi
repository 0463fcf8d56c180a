"""Type stubs of pcg's native module (the API is re-exported by `pcg`)."""

import os
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

Arrays = Mapping[str, npt.ArrayLike]
PathLike = Union[str, "os.PathLike[str]"]

class CompileError(Exception):
    """A .pcg source that does not compile; `str(e)` is what `pcg check` prints."""

    codes: List[str]

class DivergenceError(RuntimeError):
    """A value that stopped being finite, with where and when."""

    what: str
    relaxation_step: Optional[int]
    epoch: Optional[int]
    batch: Optional[int]

class Model:
    """A compiled .pcg model with its parameters and training state."""

    @property
    def name(self) -> str: ...
    @property
    def params(self) -> Dict[str, np.ndarray]:
        """Copies of the parameters (float32); assign a dict to replace some of them."""
    @params.setter
    def params(self, value: Arrays) -> None: ...
    @property
    def inputs(self) -> Dict[str, Tuple[int, ...]]: ...
    @property
    def targets(self) -> Dict[str, Tuple[int, ...]]: ...
    @property
    def epochs_done(self) -> int: ...
    def default_batch(self) -> Dict[str, np.ndarray]: ...
    def grad(
        self,
        batch: Optional[Arrays] = None,
        *,
        method: Optional[str] = None,
        backend: Optional[str] = None,
        mode: Optional[str] = None,
        steps: Optional[int] = None,
        rate: Optional[float] = None,
        momentum: Optional[float] = None,
        target: Optional[str] = None,
        schedule: Optional[str] = None,
        tol: Optional[float] = None,
        precision: Optional[Mapping[str, float]] = None,
        nodes: Optional[str] = None,
    ) -> Tuple[float, Dict[str, np.ndarray]]:
        """Loss and gradients on one batch (dL/dθ by backprop, −Δθ by predictive coding)."""
    def step(
        self,
        batch: Optional[Arrays] = None,
        *,
        method: Optional[str] = None,
        backend: Optional[str] = None,
        mode: Optional[str] = None,
        steps: Optional[int] = None,
        rate: Optional[float] = None,
        momentum: Optional[float] = None,
        target: Optional[str] = None,
        schedule: Optional[str] = None,
        tol: Optional[float] = None,
        precision: Optional[Mapping[str, float]] = None,
        nodes: Optional[str] = None,
        lr: Optional[float] = None,
    ) -> Dict[str, Optional[float]]:
        """One training step with the file's optimiser; returns loss, energy, relaxation_steps."""
    def fit(
        self,
        data: Optional[str] = None,
        *,
        x: Optional[npt.ArrayLike] = None,
        y: Optional[npt.ArrayLike] = None,
        x_test: Optional[npt.ArrayLike] = None,
        y_test: Optional[npt.ArrayLike] = None,
        epochs: Optional[int] = None,
        seed: Optional[int] = None,
        max_batches: Optional[int] = None,
        save: Optional[PathLike] = None,
        verbose: bool = False,
        data_dir: Optional[PathLike] = None,
        method: Optional[str] = None,
        backend: Optional[str] = None,
        mode: Optional[str] = None,
        steps: Optional[int] = None,
        rate: Optional[float] = None,
        momentum: Optional[float] = None,
        target: Optional[str] = None,
        schedule: Optional[str] = None,
        tol: Optional[float] = None,
        precision: Optional[Mapping[str, float]] = None,
        nodes: Optional[str] = None,
        lr: Optional[float] = None,
    ) -> List[Dict[str, Any]]:
        """Trains as `pcg run` does; returns each epoch's metrics."""
    def evaluate(
        self,
        data: Optional[str] = None,
        *,
        x_test: Optional[npt.ArrayLike] = None,
        y_test: Optional[npt.ArrayLike] = None,
        backend: Optional[str] = None,
        data_dir: Optional[PathLike] = None,
    ) -> Dict[str, Any]:
        """Test loss, accuracy and example count, as `pcg eval` prints them."""
    def gradcheck(
        self,
        batch: Optional[Arrays] = None,
        *,
        mode: Optional[str] = None,
        steps: Optional[int] = None,
        rate: Optional[float] = None,
        momentum: Optional[float] = None,
        target: Optional[str] = None,
        schedule: Optional[str] = None,
        tol: Optional[float] = None,
        precision: Optional[Mapping[str, float]] = None,
        nodes: Optional[str] = None,
    ) -> Dict[str, Any]:
        """PC's updates against backprop's gradients, step by step (`pcg gradcheck`)."""
    def ir(
        self,
        stage: str = "ir",
        format: str = "text",
        *,
        mode: Optional[str] = None,
        steps: Optional[int] = None,
        rate: Optional[float] = None,
        momentum: Optional[float] = None,
        target: Optional[str] = None,
        schedule: Optional[str] = None,
        tol: Optional[float] = None,
        precision: Optional[Mapping[str, float]] = None,
        nodes: Optional[str] = None,
        method: Optional[str] = None,
    ) -> str:
        """A stage of the compiler as `pcg ir` prints it."""
    def predict(
        self, inputs: Arrays, *, backend: Optional[str] = None
    ) -> Dict[str, np.ndarray]:
        """The values the loss reads, by name, on inputs of any batch size (no target)."""
    def export(self, path: PathLike, *, batch: int = 1) -> None:
        """Writes the forward pass and the parameters as an ONNX file (opset 17)."""
    def save(self, path: PathLike) -> None:
        """Writes a checkpoint in the CLI's format."""
    def load(self, path: PathLike) -> None:
        """Reads a checkpoint, or any .npz of the model's parameters."""

def compile(
    path: PathLike,
    *,
    batch: Optional[int] = None,
    dims: Optional[Mapping[str, int]] = None,
    model: Optional[str] = None,
    seed: Optional[int] = None,
) -> Model:
    """Compiles the model of a .pcg file."""

def compile_source(
    text: str,
    *,
    name: str = "<source>",
    batch: Optional[int] = None,
    dims: Optional[Mapping[str, int]] = None,
    model: Optional[str] = None,
    seed: Optional[int] = None,
) -> Model:
    """Compiles the model of .pcg source text."""

def from_onnx(path: PathLike, *, loss: str = "mse", target: str = "y") -> Model:
    """Imports an ONNX model as `pcg import` does, its initializers as the parameters."""
