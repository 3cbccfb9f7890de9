"""``llmdual.export(model, path, format=...)``: one entry point for every deployment format, each verified
against the native model before the file is kept."""

from __future__ import annotations

import os
from typing import Any

FORMATS = ("onnx",)


def export(model: Any, path: str | os.PathLike, format: str = "onnx", **options: Any) -> Any:
    """Export ``model`` to ``path`` as ``format``; ``onnx`` is ``llmdual.onnx.export_onnx(model, path, **options)``."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    from llmdual.onnx import export_onnx

    return export_onnx(model, path, **options)
