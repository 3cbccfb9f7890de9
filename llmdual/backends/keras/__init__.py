"""Keras 3 backend: GPT-2 LM and classifier, implementing every capability protocol of
``llmdual.contract``; mirrors ``llmdual/backends/torch/__init__.py``."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np


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


# TensorFlow's C++ log level: warnings and above before it is first imported (a user's own value wins)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if (os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow" and "tensorflow" not in sys.modules
        and os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0"):
    with _stderr_silenced():
        import tensorflow  # noqa: F401  (imported here, quietly, before Keras imports it)

from llmdual.backends.keras.api import (  # noqa: E402
    NAME,
    build,
    forward,
    intermediates,
    loss_and_grads,
)
from llmdual.backends.keras.decode import decoder  # noqa: E402
from llmdual.backends.keras.distributed import scope as data_parallel_scope  # noqa: E402
from llmdual.backends.keras.lora import add_lora, remove_lora  # noqa: E402
from llmdual.backends.keras.quantize import quantize, weight_bytes  # noqa: E402
from llmdual.backends.keras.train import train, trainer  # noqa: E402
from llmdual.backends.keras.weights import get_weights, set_weights  # noqa: E402

if TYPE_CHECKING:
    import keras


def onnx_graph(model: keras.Model, sig: Any, example: dict[str, np.ndarray], opset: int, dynamic: bool) -> Any:
    """The ``onnx.ModelProto`` of ``model`` with ``sig``'s inputs and outputs, traced on ``example``."""
    from llmdual.backends.keras import export  # needs the onnx extra: imported on first export only

    return export.graph(model, sig, example, opset, dynamic)


def onnx_opsets() -> range:
    """The opsets this backend's ONNX exporter can emit."""
    from llmdual.backends.keras import export

    return export.OPSETS


def run_signature(model: keras.Model, sig: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The native model's outputs for an export signature's feeds, in its output order (the verification reference)."""
    from llmdual.backends.keras import export

    return export.run(model, sig, feeds)


def export_native(model: keras.Model, sig: Any, example: dict[str, np.ndarray], path: str, format: str,
                  metadata: dict[str, str]) -> None:
    """Write ``model`` at ``path`` in a native ``format`` with ``sig``'s inputs, outputs and dynamic axes, traced
    on ``example``, carrying ``metadata``."""
    from llmdual.backends.keras import native

    native.save(model, sig, example, path, format, metadata)


def load_native(path: str, format: str) -> tuple[Callable[[dict[str, np.ndarray]], list[np.ndarray]], dict[str, str]]:
    """A native export's runner (feeds by input name in, outputs in signature order out) and its metadata."""
    from llmdual.backends.keras import native

    return native.load(path, format)


__all__ = [
    "NAME", "add_lora", "build", "data_parallel_scope", "decoder", "forward", "get_weights", "intermediates", "loss_and_grads",
    "onnx_graph", "onnx_opsets", "remove_lora", "run_signature", "set_weights", "train", "trainer",
    "export_native", "load_native", "quantize", "weight_bytes",
]
