"""``llmdual.export(model, path, format=...)``: one entry point for every deployment format, each verified
against the native model before the file is kept."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from llmdual.contract import backend_name, backend_of

# every format, and the backend that writes it (None: either); a backend package's native_formats() lists its own
FORMATS: dict[str, str | None] = {
    "onnx": None, "torch-export": "torch", "aoti": "torch", "saved-model": "keras", "litert": "keras",
}
ONNX_PACKAGES = {"torch": ("onnx", "onnxruntime", "onnxscript"), "keras": ("onnx", "onnxruntime", "tf2onnx")}


def formats_for(model: Any) -> tuple[str, ...]:
    """The formats ``model``'s backend exports to: ONNX and its own."""
    return ("onnx", *backend_of(model).native_formats())


def export(model: Any, path: str | os.PathLike, format: str = "onnx", **options: Any) -> Any:
    """Export ``model`` to ``path`` as ``format``: ``onnx`` is ``llmdual.onnx.export_onnx(model, path, **options)``,
    the others ``llmdual.native.export_native(model, path, format, **options)`` (``torch-export`` and ``aoti`` for
    PyTorch models, ``saved-model`` and ``litert`` for Keras ones)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    offered = formats_for(model)
    if format not in offered:
        name = backend_name(model)
        raise ValueError(f"format {format!r} is not available for a {name} model; the {name} backend exports to "
                         f"{', '.join(offered)}")
    if format == "onnx":
        missing = [p for p in ONNX_PACKAGES[backend_name(model)] if importlib.util.find_spec(p) is None]
        if missing:
            raise ImportError(f"ONNX export needs {', '.join(missing)}, which is not installed; install it with: "
                              f"pip install 'llmdual[onnx]'")
        from llmdual.onnx import export_onnx

        return export_onnx(model, path, **options)
    from llmdual.native import export_native

    return export_native(model, path, format, **options)
