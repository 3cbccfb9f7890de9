"""PyTorch backend: GPT-2 LM and classifier, implementing every capability protocol of
``llmdual.contract``; mirrors ``llmdual/backends/keras/__init__.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from llmdual.backends.torch.api import (
    NAME,
    build,
    forward,
    intermediates,
    loss_and_grads,
)
from llmdual.backends.torch.decode import decoder
from llmdual.backends.torch.distributed import scope as data_parallel_scope
from llmdual.backends.torch.lora import add_lora, remove_lora
from llmdual.backends.torch.quantize import quantize, weight_bytes
from llmdual.backends.torch.train import train, trainer
from llmdual.backends.torch.weights import get_weights, set_weights


def onnx_graph(model: nn.Module, sig: Any, example: dict[str, np.ndarray], opset: int, dynamic: bool) -> Any:
    """The ``onnx.ModelProto`` of ``model`` with ``sig``'s inputs and outputs, traced on ``example``."""
    from llmdual.backends.torch import export  # needs the onnx extra: imported on first export only

    return export.graph(model, sig, example, opset, dynamic)


def onnx_opsets() -> range:
    """The opsets this backend's ONNX exporter can emit."""
    from llmdual.backends.torch import export

    return export.OPSETS


def run_signature(model: nn.Module, sig: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The native model's outputs for an export signature's feeds, in its output order (the verification reference)."""
    from llmdual.backends.torch import export

    return export.run(model, sig, feeds)


def export_native(model: nn.Module, sig: Any, example: dict[str, np.ndarray], path: str, format: str,
                  metadata: dict[str, str]) -> None:
    """Write ``model`` at ``path`` in a native ``format`` with ``sig``'s inputs, outputs and dynamic axes, traced
    on ``example``, carrying ``metadata``."""
    from llmdual.backends.torch import native

    native.save(model, sig, example, path, format, metadata)


def load_native(path: str, format: str) -> tuple[Callable[[dict[str, np.ndarray]], list[np.ndarray]], dict[str, str]]:
    """A native export's runner (feeds by input name in, outputs in signature order out) and its metadata."""
    from llmdual.backends.torch import native

    return native.load(path, format)


__all__ = [
    "NAME", "add_lora", "build", "data_parallel_scope", "decoder", "forward", "get_weights", "intermediates", "loss_and_grads",
    "onnx_graph", "onnx_opsets", "remove_lora", "run_signature", "set_weights", "train", "trainer",
    "export_native", "load_native", "quantize", "weight_bytes",
]
