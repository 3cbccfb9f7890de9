"""Export to each backend's own deployment formats, verified like ONNX before the file is kept.

Framework-free: the signature, metadata, the checks and the atomic write live here; the backend packages only
write and load their formats (``export_native``, ``load_native``). Verification reloads the written file in a
fresh process (``python -m llmdual.native.check``), so what is kept is what a server would load, and compares it
with the native model at shapes the export was not traced with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.contract import backend, backend_name, backend_of, export_formats, native_formats
from llmdual.core.io import atomic_write, atomic_write_dir, check_export_folder, read_manifest, replaced_file
from llmdual.core.report import table
from llmdual.core.signature import Shape, VerificationError, check_outputs, default_shapes, make_feeds, signature

# format -> (the backend that writes it, the format): from the registry
FORMATS = native_formats()


def check_format(model: Any, format: str, kv_cache: bool) -> str:
    """``format`` if the model's backend exports this model to it natively, else ``ValueError`` naming why (and
    what that backend offers)."""
    name = backend_name(model)
    offered = native_formats(name)
    if format not in offered:
        raise ValueError(f"format {format!r} is not available for a {name} model; the {name} backend exports to "
                         f"{', '.join(export_formats(name)) or 'nothing'}")
    why = offered[format][1].plain_lm_only
    if why and (kv_cache or model.task != "lm"):
        others = [f for f in export_formats(name) if not (f in offered and offered[f][1].plain_lm_only)]
        raise ValueError(f"{format} exports the plain LM only: {why}; export this one as {' or '.join(others)}")
    return format


def check_path(path: str | os.PathLike, format: str, overwrite: bool = False) -> Path:
    """``path`` as a Path if ``format`` can be written there, else the error naming why, before any work is done.
    What is there already is replaced only if it is a previous ``format`` export, or ``overwrite`` is True (a
    folder export then replaces only its own files: ``llmdual.core.io.atomic_write_dir``)."""
    path, spec = Path(path), FORMATS[format][1]
    kind, suffix = spec.kind, spec.suffix
    if kind == "file" and path.is_dir():
        raise IsADirectoryError(f"cannot write the {format} file to {path}: it is a folder; name a file inside it")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise FileExistsError(f"cannot write the {format} folder to {path}: a file is there")
    if suffix and path.suffix != suffix:
        raise ValueError(f"a {format} export is a {suffix} file; got {path.name!r}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"cannot write {path}: folder {path.parent} is not writable")
    if kind == "folder":
        check_export_folder(path, format, overwrite)
    elif path.exists():
        replaced_file(path)  # refuses a read-only file
        if not overwrite and not is_archive_export(path, format):
            raise FileExistsError(f"cannot write the {format} export to {path}: a file that is not a {format} "
                                  "export is there; pass overwrite=True to replace it")
    return path


def is_archive_export(path: str | os.PathLike, format: str) -> bool:
    """Whether the file at ``path`` is a ``format`` export: an archive holding llmdual's metadata as JSON (the
    program's extra file, or AOTInductor's metadata)."""
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith(("llmdual.json", "metadata.json")):
                    meta = json.loads(archive.read(name))
                    if isinstance(meta, dict) and meta.get("llmdual.format") == format:
                        return True
    except (OSError, ValueError, zipfile.BadZipFile):
        return False
    return False


def verify_native(
    path: str | os.PathLike,
    format: str,
    model: Any,
    kv_cache: bool = False,
    shapes: Sequence[Shape] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    seed: int = 0,
) -> dict[str, float]:
    """Max abs difference per shape between the export at ``path``, loaded and run in a fresh process, and the
    native ``model`` (``|export - native| <= atol + rtol * |native|``); ``VerificationError`` if any is off."""
    config, name = model.config, backend_name(model)
    sig = signature(config, model.task, kv_cache)
    shapes = default_shapes(config, kv_cache) if shapes is None else [tuple(s) for s in shapes]
    feeds = [make_feeds(config, sig, shape, seed) for shape in shapes]
    got = _run_fresh(path, format, name, feeds)
    native = backend_of(model)
    return check_outputs(lambda feed: native.run_signature(model, sig, feed), name, sig, list(zip(shapes, feeds, got)),
                         f"{path} ({format})", atol, rtol)


def _run_fresh(path: str | os.PathLike, format: str, name: str, feeds: list[dict[str, np.ndarray]]) -> list[list]:
    """Outputs of the export for each feed, from a new Python process that loads it; ``VerificationError`` with
    the process's last error lines if it cannot."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = Path(tmp, "feeds.npz"), Path(tmp, "outputs.npz")
        np.savez(inputs, **{f"{i}/{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()})
        root = str(Path(__file__).resolve().parents[2])  # the folder holding llmdual
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        done = subprocess.run([sys.executable, "-m", "llmdual.native.check", os.fspath(path), format, name,
                               str(inputs), str(outputs)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise VerificationError(f"{path} ({format}) could not be loaded and run in a fresh process:\n{tail}")
        with np.load(outputs) as data:
            return [[data[f"{i}/{j}"] for j in range(int(data[f"{i}/count"]))] for i in range(len(feeds))]


@dataclass
class NativeResult:
    """Summary of one verified native export: where, what, how big, how long it took, how close it is."""

    path: Path
    format: str
    backend: str
    task: str
    kv_cache: bool
    file_bytes: int
    export_seconds: float
    verify_seconds: float
    max_abs_diff: dict[str, float]  # per verified shape label ("BxT" or "BxT+P")
    atol: float
    rtol: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def export_native(
    model: Any,
    path: str | os.PathLike,
    format: str,
    kv_cache: bool = False,
    shape: tuple[int, int] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    overwrite: bool = False,
) -> NativeResult:
    """Export an llmdual model to its backend's ``format`` at ``path`` with dynamic batch and sequence axes, and
    verify it before keeping it. Inputs and outputs are ONNX's (``llmdual.core.signature``); ``kv_cache=True`` exports
    the LM decoder step with its cache. ``shape`` is the (batch, sequence) traced at. The export appears only once
    it reloads in a fresh process and matches the native model at other shapes; on any failure nothing is left.
    A previous export of the same format at ``path`` is replaced; anything else there only with ``overwrite=True``,
    and a folder export replaces only its own files even then. A symlink at ``path`` stays a link to the export."""
    format = check_format(model, format, kv_cache)
    path = check_path(path, format, overwrite)
    config, name = model.config, backend_name(model)
    sig = signature(config, model.task, kv_cache)
    B, T = shape or (2, min(8, config.max_seq_len))
    traced = (B, T, min(3, config.max_seq_len - T) if kv_cache else 0)
    metadata = {
        "llmdual.backend": name, "llmdual.format": format, "llmdual.task": model.task,
        "llmdual.kv_cache": str(int(kv_cache)), "llmdual.config": config.to_json(),
        "llmdual.inputs": ",".join(sig.inputs), "llmdual.outputs": ",".join(sig.outputs),
    }
    seconds: dict[str, float] = {}
    diffs: dict[str, float] = {}

    def write(tmp: str) -> None:
        start = time.perf_counter()
        backend(name).export_native(model, sig, make_feeds(config, sig, traced, seed=1), tmp, format, metadata)
        seconds["export"] = time.perf_counter() - start
        diffs.update(verify_native(tmp, format, model, kv_cache, None, atol, rtol))
        seconds["verify"] = time.perf_counter() - start - seconds["export"]

    if FORMATS[format][1].kind == "folder":
        atomic_write_dir(path, write, format, overwrite)
    else:
        atomic_write(path, write)
    return NativeResult(
        path=path, format=format, backend=name, task=model.task, kv_cache=kv_cache, file_bytes=size_of(path),
        export_seconds=seconds["export"], verify_seconds=seconds["verify"], max_abs_diff=diffs, atol=atol, rtol=rtol,
    )


def size_of(path: str | os.PathLike) -> int:
    """Bytes of a file, or of the files a folder export wrote (per its manifest; else every file under it)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    manifest = read_manifest(path)
    files = [path / name for name in manifest["files"]] if manifest else path.rglob("*")
    return sum(p.stat().st_size for p in files if p.is_file())


def native_table(results: Sequence[NativeResult], markdown: bool = True) -> str:
    """One row per native export: format, size, export and verification time, closeness."""
    headers = ["backend", "format", "task", "graph", "size MB", "export s", "verify s", "max abs diff"]
    rows = [[r.backend, r.format, r.task, "kv-cache" if r.kv_cache else "plain", r.file_bytes / 2**20,
             r.export_seconds, r.verify_seconds, f"{max(r.max_abs_diff.values()):.2e}"] for r in results]
    return table(headers, rows, markdown)
