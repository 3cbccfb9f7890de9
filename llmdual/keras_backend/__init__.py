"""Keras 3 backend: GPT-2 LM and classifier, implementing llmdual.contract.Backend (see there) function for
function; mirrors ``llmdual/torch_backend/__init__.py``."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from llmdual.contract import quiet_tensorflow


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: TensorFlow's libraries print their start-up lines (absl's
    "InitializeLog", oneDNN, CPU features) from C++ before any log level applies, once per library."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


quiet_tensorflow()
if (os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow" and "tensorflow" not in sys.modules
        and os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0"):
    with _stderr_silenced():
        import tensorflow  # noqa: F401  (imported here, quietly, before Keras imports it)

from llmdual.keras_backend.api import (  # noqa: E402
    NAME,
    build,
    forward,
    intermediates,
    loss_and_grads,
)
from llmdual.keras_backend.decode import decoder  # noqa: E402
from llmdual.keras_backend.distributed import scope as data_parallel_scope  # noqa: E402
from llmdual.keras_backend.lora import add_lora, remove_lora  # noqa: E402
from llmdual.keras_backend.quantize import quantize, weight_bytes  # noqa: E402
from llmdual.keras_backend.train import train, trainer  # noqa: E402
from llmdual.keras_backend.weights import get_weights, set_weights  # noqa: E402

if TYPE_CHECKING:
    import keras


def onnx_graph(model: keras.Model, sig: Any, example: dict[str, np.ndarray], opset: int, dynamic: bool) -> Any:
    """The ``onnx.ModelProto`` of ``model`` with ``sig``'s inputs and outputs, traced on ``example``."""
    from llmdual.keras_backend import export  # needs the onnx extra: imported on first export only

    return export.graph(model, sig, example, opset, dynamic)


def onnx_opsets() -> range:
    """The opsets this backend's ONNX exporter can emit."""
    from llmdual.keras_backend import export

    return export.OPSETS


def run_signature(model: keras.Model, sig: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The native model's outputs for an export signature's feeds, in its output order (the verification reference)."""
    from llmdual.keras_backend import export

    return export.run(model, sig, feeds)


def native_formats() -> tuple[str, ...]:
    """The formats this backend exports to natively, besides ONNX (``llmdual.export`` names)."""
    from llmdual.keras_backend import native  # imported on first use: the exporters load much of the framework

    return native.FORMATS


def export_native(model: keras.Model, sig: Any, example: dict[str, np.ndarray], path: str, format: str,
                  metadata: dict[str, str]) -> None:
    """Write ``model`` at ``path`` in a native ``format`` with ``sig``'s inputs, outputs and dynamic axes, traced
    on ``example``, carrying ``metadata``."""
    from llmdual.keras_backend import native

    native.save(model, sig, example, path, format, metadata)


def load_native(path: str, format: str) -> tuple[Callable[[dict[str, np.ndarray]], list[np.ndarray]], dict[str, str]]:
    """A native export's runner (feeds by input name in, outputs in signature order out) and its metadata."""
    from llmdual.keras_backend import native

    return native.load(path, format)


__all__ = [
    "NAME", "add_lora", "build", "data_parallel_scope", "decoder", "forward", "get_weights", "intermediates", "loss_and_grads",
    "onnx_graph", "onnx_opsets", "remove_lora", "run_signature", "set_weights", "train", "trainer",
    "export_native", "load_native", "native_formats", "quantize", "weight_bytes",
]
