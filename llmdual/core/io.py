"""Files: the atomic write every writer in the library uses, the model file (config, task and canonical weights
in one safetensors file) and a run's optimizer-state file, both carrying a SHA-256 checksum that reading verifies."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from llmdual.core.config import Config
from llmdual.core.weights import check_task, check_weights

MODEL_FORMAT = "llmdual/1"
OPTIMIZER_FORMAT = "llmdual-optimizer/1"
CHECKSUM_KEY = "sha256"


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` on a hidden temporary name in the target's folder, fsync it, rename it into place
    and fsync the folder. On failure the temporary file is removed and the error names ``path``."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the mode open() would
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, Exception):
            raise _naming(err, path, tmp) from None  # the original names the temporary file
        raise
    _fsync(path.parent)  # the rename itself is durable only once the folder's entry is on disk
    return path


def atomic_write_dir(path: str | Path, write: Callable[[str], Any]) -> Path:
    """``atomic_write`` for a folder: ``write(tmp_dir)`` fills a hidden temporary folder beside ``path``; every file
    in it and the folder are fsynced, then it takes ``path``'s place (a folder already there goes only after)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    tmp = ""
    try:
        tmp = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private; give it the mode mkdir would
        for folder, _, files in os.walk(tmp, topdown=False):
            for name in files:
                _fsync(os.path.join(folder, name))
            _fsync(folder)
        old = Path(f"{tmp}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception):
            raise _naming(err, path, tmp) from None
        raise
    _fsync(path.parent)
    return path


def _fsync(path: str | Path) -> None:
    """Flush a file's or a folder's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _naming(err: Exception, path: Path, tmp: str) -> Exception:
    """``err`` re-worded to name the user's ``path``, never the hidden temporary file; same type where possible."""
    if isinstance(err, OSError) and err.strerror:
        return type(err)(err.errno, f"cannot write {path}: {err.strerror}")
    detail = str(err).replace(tmp, str(path)) if tmp else str(err)
    try:
        return type(err)(f"cannot write {path}: {detail}")
    except TypeError:  # exception types whose constructor takes other arguments
        return OSError(f"cannot write {path}: {detail}")


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def checksum(fields: Mapping[str, str], tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over text fields (by key) and every tensor's name, dtype, shape and bytes (by name)."""
    digest = hashlib.sha256()
    for key in sorted(fields):
        digest.update(json.dumps([key, fields[key]]).encode())
    for name in sorted(tensors):
        value = np.ascontiguousarray(tensors[name])
        digest.update(json.dumps([name, value.dtype.name, list(value.shape)]).encode())
        digest.update(value.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def write_checked(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: dict[str, str]) -> Path:
    """Write tensors and metadata as safetensors, atomically, with the checksum of both in the metadata."""
    tensors = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
    metadata = {**metadata, CHECKSUM_KEY: checksum(metadata, tensors)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_checked(path: str | Path, kind: str, fmt: str, unmarked: bool = False) -> tuple[dict[str, str],
                                                                                        dict[str, np.ndarray]]:
    """Metadata and tensors of a ``kind`` file written by ``write_checked``; ``ValueError`` naming the file if it is
    unreadable, of another format or fails its checksum (a file without one loads with a ``UserWarning``).
    ``unmarked`` also accepts files without a format (optimizer state written before files were checksummed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors {kind} (truncated or corrupt?): {err}") from err
    if metadata.get("format") != fmt and not (unmarked and "format" not in metadata):
        raise ValueError(f"{path} is not an llmdual {kind}: format {metadata.get('format')!r}, expected {fmt!r}")
    stored = metadata.pop(CHECKSUM_KEY, None)
    if stored is None:
        warnings.warn(f"{path} has no checksum (written before llmdual checksummed its files): its {kind} "
                      "cannot be verified", UserWarning, stacklevel=3)
    elif stored != checksum(metadata, tensors):
        raise ValueError(f"{path} fails its checksum: the {kind} was modified or corrupted after it was written")
    return metadata, tensors


def write_model_file(path: str | Path, config: Config, task: str, weights: Mapping[str, np.ndarray]) -> Path:
    """Write a model file: config, task and canonical fp32 weights in one checksummed safetensors file, atomically."""
    metadata = {"format": MODEL_FORMAT, "task": task, "config": config.to_json()}
    return write_checked(path, weights, metadata)


def read_model_file(path: str | Path) -> tuple[Config, str, dict[str, np.ndarray]]:
    """Config, task and weights of a model file; ``ValueError`` if it is truncated, foreign, fails its checksum or
    is inconsistent."""
    metadata, weights = read_checked(path, "model file", MODEL_FORMAT)
    try:
        config = Config.from_json(metadata["config"])
        task = check_task(metadata["task"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} has corrupt model-file metadata: {err}") from err
    config.check_memory(task)
    return config, task, check_weights(weights, config, task)


def write_optimizer_state(path: str | Path, moments: Mapping[str, np.ndarray]) -> Path:
    """Write a run's optimizer state (AdamW moments ``m.<name>``/``v.<name>``), checksummed, atomically."""
    return write_checked(path, moments, {"format": OPTIMIZER_FORMAT})


def read_optimizer_state(path: str | Path) -> dict[str, np.ndarray]:
    """The moments of an optimizer-state file, checksum verified (their names and shapes: ``check_moments``)."""
    return read_checked(path, "optimizer state", OPTIMIZER_FORMAT, unmarked=True)[1]
