"""``llmdual.export(model, path, format=...)``: one entry point for every deployment format, each verified
against the native model before the file is kept. The formats come from the registry (``llmdual.contract``)."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from llmdual.contract import RUNTIMES, backend_name, backend_of, export_formats, info


def formats_for(model: Any) -> list[str]:
    """The formats ``model``'s backend exports to: ONNX (where offered) and its own."""
    return export_formats(backend_name(model))


def export(model: Any, path: str | os.PathLike, format: str = "onnx", **options: Any) -> Any:
    """Export ``model`` to ``path`` as ``format``: ``onnx`` is ``llmdual.onnx.export_onnx(model, path, **options)``,
    the others ``llmdual.native.export_native(model, path, format, **options)`` (each backend's own formats:
    ``llmdual.contract.export_formats()``)."""
    if format not in export_formats():
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(export_formats())}")
    backend_of(model)  # a foreign object is refused before its formats are looked up
    name, offered = backend_name(model), formats_for(model)
    if format not in offered:
        raise ValueError(f"format {format!r} is not available for a {name} model; the {name} backend exports to "
                         f"{', '.join(offered) or 'nothing'}")
    if format == "onnx":
        needs = (*RUNTIMES["onnx"].needs, *info(name).onnx_needs)
        missing = [p for p in needs if importlib.util.find_spec(p) is None]
        if missing:
            raise ImportError(f"ONNX export needs {', '.join(missing)}, which is not installed; install it with: "
                              f"pip install 'llmdual[onnx]'")
        from llmdual.onnx import export_onnx

        return export_onnx(model, path, **options)
    from llmdual.native import export_native

    return export_native(model, path, format, **options)
