"""ONNX export of llmdual models from either backend, verified against the native model before it is kept.

This layer is framework-free: the checks (``onnx.checker``, then onnxruntime vs the native model at shapes the
exporter never saw, on the interface and inputs of ``llmdual.core.signature``), int8 quantization and the result
tables. The backend parts (``llmdual/backends/torch/export.py``,
``llmdual/backends/keras/export.py``) only turn a model into an ``onnx.ModelProto`` and run the native reference;
they are imported on first use.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from llmdual.contract import backend_name, backend_of
from llmdual.core.io import atomic_write, one_line, replaced_file
from llmdual.core.signature import (
    Axes,
    Shape,
    Signature,
    VerificationError,
    check_outputs,
    default_shapes,
    make_feeds,
    shape_label,
    signature,
)
from llmdual.onnx.runtime import export_info, open_session

__all__ = [
    "DEFAULT_OPSET", "Axes", "ExportResult", "Shape", "Signature", "VerificationError", "check_target",
    "default_shapes", "export_onnx", "make_feeds", "shape_label", "signature", "summary_table", "verify",
]

DEFAULT_OPSET = 18  # the one opset both exporters emit natively (torch's dynamo: 18 and up; tf2onnx: up to 18)


def _check_opset(opset: object, allowed: range, backend: str) -> int:
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"opset must be an integer, got {opset!r}")
    if int(opset) not in allowed:
        raise ValueError(f"opset {opset} is not supported by the {backend} exporter; "
                         f"allowed: {allowed.start}..{allowed.stop - 1} (default {DEFAULT_OPSET})")
    return int(opset)


def check_target(path: str | os.PathLike) -> Path:
    """``path`` as a Path if a file can be written there, else the error naming why, before any work is done."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write the ONNX file to {path}: it is a folder; name a file inside it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise PermissionError(f"cannot write {path}: folder {path.parent} is not writable ({err.strerror})") from err
    return path


def check_replaceable(path: Path, overwrite: bool) -> Path:
    """``path`` if nothing is there, it holds a previous llmdual ONNX export, or ``overwrite``; else
    ``FileExistsError`` (and ``PermissionError`` for a read-only file) before any work is done."""
    if not path.exists():
        return path
    replaced_file(path)
    if not overwrite and not _is_export(path):
        raise FileExistsError(f"cannot write the ONNX export to {path}: a file that is not an llmdual ONNX export "
                              "is there; pass overwrite=True to replace it")
    return path


def _is_export(path: Path) -> bool:
    """Whether ``path`` is an ONNX file written by ``export_onnx`` (its metadata names the backend)."""
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and the like: not an ONNX file
        return False
    return any(prop.key == "llmdual.backend" for prop in proto.metadata_props)


def _finalize(proto: onnx.ModelProto, sig: Signature, dynamic: bool, metadata: dict[str, str]) -> None:
    """Put outputs in the signature's order, name the dynamic axes alike for both exporters, stamp metadata."""
    graph = proto.graph
    if [v.name for v in graph.input] != list(sig.inputs):
        raise RuntimeError(f"exporter produced inputs {[v.name for v in graph.input]}, expected {list(sig.inputs)}")
    outputs = {v.name: v for v in graph.output}
    if set(outputs) != set(sig.outputs):
        raise RuntimeError(f"exporter produced outputs {sorted(outputs)}, expected {list(sig.outputs)}")
    ordered = [onnx.ValueInfoProto.FromString(outputs[name].SerializeToString()) for name in sig.outputs]
    del graph.output[:]
    graph.output.extend(ordered)
    axes = {**sig.inputs, **sig.outputs}
    for value in (*graph.input, *graph.output):
        for dim, axis in zip(value.type.tensor_type.shape.dim, axes[value.name]):
            if dynamic and isinstance(axis, str):
                dim.dim_param = axis
    onnx.helper.set_model_props(proto, metadata)


def _opset_of(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def verify(
    path: str | os.PathLike,
    model: Any,
    shapes: Sequence[Shape] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    seed: int = 0,
) -> dict[str, float]:
    """Max abs difference per shape between onnxruntime on ``path`` and the native ``model`` (either backend:
    a file exported from one backend can be checked against the other). Every output is compared
    (``|ort - native| <= atol + rtol * |native|``); ``VerificationError`` with the figures if any is off."""
    backend_of(model)  # a model that is not llmdual's is refused before the file is opened
    session = open_session(path)
    info = export_info(session)
    sig = signature(model.config, model.task, info.kv_cache)
    io = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if io != (list(sig.inputs), list(sig.outputs)):
        raise VerificationError(f"{path} has inputs {io[0]} and outputs {io[1]}; the {model.task} model of this "
                                f"config needs {list(sig.inputs)} and {list(sig.outputs)}")
    runs = []
    for shape in default_shapes(model.config, sig.kv_cache) if shapes is None else shapes:
        feeds = make_feeds(model.config, sig, tuple(shape), seed)
        runs.append((tuple(shape), feeds, session.run(list(sig.outputs), feeds)))
    native = backend_of(model)
    return check_outputs(lambda feeds: native.run_signature(model, sig, feeds), backend_name(model), sig, runs,
                         str(path), atol, rtol)


@dataclass
class ExportResult:
    """Summary of one verified export: the file, its opset, size and ops, how long it took, how close it is."""

    path: Path
    backend: str
    task: str
    kv_cache: bool
    opset: int
    dynamic: bool
    file_bytes: int
    op_counts: dict[str, int]
    export_seconds: float
    verify_seconds: float
    max_abs_diff: dict[str, float]  # per verified shape label ("BxT" or "BxT+P")
    atol: float
    rtol: float

    @property
    def node_count(self) -> int:
        return sum(self.op_counts.values())

    def top_ops(self, n: int = 5) -> str:
        """The ``n`` most frequent op types with their counts, e.g. ``"MatMul 13, Add 15"``."""
        return ", ".join(f"{op} {count}" for op, count in list(self.op_counts.items())[:n])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path), "node_count": self.node_count}


def export_onnx(
    model: Any,
    path: str | os.PathLike,
    opset: int | None = None,
    dynamic: bool = True,
    kv_cache: bool = False,
    shape: tuple[int, int] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    overwrite: bool = False,
) -> ExportResult:
    """Export an llmdual model (either backend, LM or classifier) to ``path`` and verify it before keeping it.

    Inputs ``input_ids`` (+ ``attention_mask`` for the classifier), output ``logits``, dynamic ``batch`` and
    ``sequence`` axes unless ``dynamic`` is False (then fixed to ``shape``, the (batch, sequence) traced at).
    ``kv_cache=True`` exports an LM decoder step with a cache instead: inputs ``input_ids``,
    ``attention_mask`` (past + new), ``position_ids``, ``past.{i}.key/value``; outputs ``logits``,
    ``present.{i}.key/value``; an empty past (length 0) is a prefill. The file appears only once
    ``onnx.checker`` and onnxruntime-vs-native (``verify``, at other shapes) pass; on any failure nothing is left.
    A previous llmdual ONNX export at ``path`` is replaced, any other file only with ``overwrite=True``; a symlink
    at ``path`` stays a link to the new file. A quantized model whose exporter cannot convert its int8 layers is
    refused with a ``ValueError`` pointing to ``llmdual.onnx.quantize`` (int8 of the float32 model's export).
    """
    backend, name = backend_of(model, "onnx"), backend_name(model)
    opset = _check_opset(DEFAULT_OPSET if opset is None else opset, backend.onnx_opsets(), name)
    if kv_cache and not dynamic:
        raise ValueError("kv_cache=True needs dynamic=True: the cache grows by one position every step")
    path = check_replaceable(check_target(path), overwrite)
    config = model.config
    sig = signature(config, model.task, kv_cache)
    B, T = shape or (2, min(8, config.max_seq_len))
    traced = (B, T, min(3, config.max_seq_len - T) if kv_cache else 0)  # past > 1 keeps its axis dynamic
    start = time.perf_counter()
    try:
        proto = backend.onnx_graph(model, sig, make_feeds(config, sig, traced, seed=1), opset, dynamic)
    except Exception as err:
        scheme = getattr(model, "quantized", None)
        if scheme is None:
            raise
        raise ValueError(f"cannot export this quantized {name} model ({scheme}) to ONNX: the {name} exporter does "
                         f"not convert its int8 layers ({one_line(err)}); export the float32 model and quantize "
                         "the ONNX file with llmdual.onnx.quantize (onnxruntime's int8)") from None
    _finalize(proto, sig, dynamic, {
        "llmdual.backend": name,
        "llmdual.task": model.task,
        "llmdual.kv_cache": str(int(kv_cache)),
        "llmdual.config": config.to_json(),
    })
    export_seconds = time.perf_counter() - start
    if _opset_of(proto) != opset:
        raise RuntimeError(f"the {name} exporter wrote opset {_opset_of(proto)} when asked for {opset}")
    diffs: dict[str, float] = {}

    def write(tmp: str) -> None:
        onnx.save_model(proto, tmp, format="protobuf")
        onnx.checker.check_model(tmp)
        diffs.update(verify(tmp, model, None if dynamic else [traced], atol, rtol))

    atomic_write(path, write)
    ops = Counter(node.op_type for node in proto.graph.node)
    return ExportResult(
        path=path, backend=name, task=model.task, kv_cache=kv_cache, opset=opset, dynamic=dynamic,
        file_bytes=path.stat().st_size, op_counts=dict(ops.most_common()),
        export_seconds=export_seconds, verify_seconds=time.perf_counter() - start - export_seconds,
        max_abs_diff=diffs, atol=atol, rtol=rtol,
    )








def summary_table(results: Sequence[ExportResult], markdown: bool = True) -> str:
    """One row per export: what users compare between the PyTorch and the Keras file."""
    headers = ["backend", "task", "graph", "opset", "size MB", "nodes", "top ops", "export s", "max abs diff"]
    rows = [
        [r.backend, r.task, "kv-cache" if r.kv_cache else "plain", r.opset, r.file_bytes / 2**20, r.node_count,
         r.top_ops(4), r.export_seconds, f"{max(r.max_abs_diff.values()):.2e}"]
        for r in results
    ]
    return table(headers, rows, markdown)



from llmdual.core.report import table  # noqa: E402
