"""Files: the atomic writes every writer in the library uses (a file; a folder export, with its manifest), the
model file (config, task and canonical weights in one safetensors file) and a run's optimizer-state file, both
carrying a SHA-256 checksum that reading requires and verifies (it catches corruption, not a deliberate edit)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
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

MODEL_FORMAT = "llmdual/2"  # always carries its checksum
LEGACY_MODEL_FORMAT = "llmdual/1"  # read still; its checksum was optional
OPTIMIZER_FORMAT = "llmdual-optimizer/1"
CHECKSUM_KEY = "sha256"
MANIFEST = "llmdual-manifest.json"  # in a folder export: its format and what it wrote


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` on a hidden temporary name in the target's folder, fsync it, rename it into place
    and fsync the folder. On failure the temporary file is removed and the error names ``path``.

    A symlink at ``path`` stays a link: its target gets the new content (written beside the target, renamed over
    it). A file already there keeps its mode; one this user may not write is refused (``PermissionError``), as
    ``cp`` refuses it."""
    path = Path(path)
    target = replaced_file(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {target.parent} does not exist")
    mode = stat.S_IMODE(target.stat().st_mode) if target.is_file() else 0o666 & ~_umask()
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, mode)  # mkstemp makes the file private; give it the mode open() would, or the old file's
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException as err:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, Exception):
            raise _naming(err, path, tmp) from None  # the original names the temporary file
        raise
    _fsync(target.parent)  # the rename itself is durable only once the folder's entry is on disk
    return path


def replaced_file(path: str | Path) -> Path:
    """The file a write to ``path`` replaces: a symlink's target (so the link survives), else ``path`` itself;
    ``PermissionError`` if it exists and this user may not write it."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target.is_file() and not os.access(target, os.W_OK):
        raise PermissionError(f"cannot write {path}: the file is read-only "
                              f"(mode {stat.S_IMODE(target.stat().st_mode):04o}); make it writable or write elsewhere")
    return target


def atomic_write_dir(path: str | Path, write: Callable[[str], Any], kind: str, overwrite: bool = False) -> Path:
    """``atomic_write`` for a folder export of ``kind``: ``write(tmp_dir)`` fills a hidden temporary folder beside
    ``path``; its files are fsynced and listed in a manifest (``MANIFEST``), and a new or empty folder takes
    ``path``'s place in one rename.

    A folder with other entries is used only if it holds a previous export (its manifest) of the same ``kind``,
    or ``overwrite`` is True, else ``FileExistsError`` before ``write`` runs. Then only the files the previous
    export listed and this one writes are replaced (one rename each, the manifest last); anything else stays.
    A symlink at ``path`` stays a link: the folder it points to is written."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {target.parent} does not exist")
    previous = check_export_folder(path, kind, overwrite)
    tmp = ""
    try:
        tmp = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private; give it the mode mkdir would
        files, folders = _contents(tmp)
        manifest = {"format": kind, "files": files, "folders": folders}
        Path(tmp, MANIFEST).write_text(json.dumps(manifest, indent=1))
        for folder, _, names in os.walk(tmp, topdown=False):
            for name in names:
                _fsync(os.path.join(folder, name))
            _fsync(folder)
        if target.is_dir() and any(target.iterdir()):
            _merge(Path(tmp), target, manifest, previous)
        else:
            os.replace(tmp, target)  # renaming over an empty folder is allowed, and atomic
    except BaseException as err:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception):
            raise _naming(err, path, tmp) from None
        raise
    _fsync(target.parent)
    return path


def check_export_folder(path: str | Path, kind: str, overwrite: bool = False) -> dict[str, Any] | None:
    """The manifest of the previous export in folder ``path`` (None if there is none); ``FileExistsError`` naming
    the folder if it has other entries and is not a ``kind`` export, unless ``overwrite``."""
    target = Path(os.path.realpath(path))
    if not target.is_dir():
        return None
    previous = read_manifest(target)
    if any(target.iterdir()) and not overwrite and (previous is None or previous["format"] != kind):
        held = f"a {previous['format']} export" if previous else "files that are not an llmdual export"
        raise FileExistsError(f"cannot write the {kind} export to folder {path}: it holds {held}; pass "
                              "overwrite=True to write into it (only the export's own files are replaced)")
    return previous


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of the export in ``folder``, or None if it has none (or one that cannot be trusted: every path
    in it must stay inside the folder)."""
    try:
        manifest = json.loads(Path(folder, MANIFEST).read_text())
        entries = [*manifest["files"], *manifest["folders"]]
        if not isinstance(manifest["format"], str) or not all(_inside(entry) for entry in entries):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest


def _inside(entry: object) -> bool:
    """Whether a manifest entry is a relative path that stays inside its folder."""
    return (isinstance(entry, str) and bool(entry) and not os.path.isabs(entry)
            and ".." not in Path(entry).parts)


def _contents(folder: str) -> tuple[list[str], list[str]]:
    """The files and the subfolders under ``folder``, as sorted relative POSIX paths."""
    root = Path(folder)
    found = sorted(root.rglob("*"))
    return ([p.relative_to(root).as_posix() for p in found if not p.is_dir()],
            [p.relative_to(root).as_posix() for p in found if p.is_dir()])


def _merge(tmp: Path, target: Path, manifest: dict[str, Any], previous: dict[str, Any] | None) -> None:
    """Move the export in ``tmp`` into the existing folder ``target`` file by file and remove what the
    ``previous`` export wrote that this one does not. A manifest listing both goes first, so an interrupted
    merge still leaves a folder the next export recognises; the new manifest goes last."""
    old_files = previous["files"] if previous else []
    old_folders = previous["folders"] if previous else []
    interim = {**manifest, "files": sorted({*old_files, *manifest["files"]}),
               "folders": sorted({*old_folders, *manifest["folders"]})}
    atomic_write(target / MANIFEST, lambda t: Path(t).write_text(json.dumps(interim, indent=1)))
    for folder in manifest["folders"]:
        (target / folder).mkdir(exist_ok=True)
    for name in manifest["files"]:
        os.replace(tmp / name, target / name)
    for name in set(old_files) - set(manifest["files"]):
        (target / name).unlink(missing_ok=True)
    for folder in sorted(set(old_folders) - set(manifest["folders"]), reverse=True):  # the deepest first
        with contextlib.suppress(OSError):  # a folder the user put files in stays
            (target / folder).rmdir()
    for folder in ["", *manifest["folders"]]:
        _fsync(target / folder)
    os.replace(tmp / MANIFEST, target / MANIFEST)
    shutil.rmtree(tmp)  # only the emptied subfolders are left in it


def one_line(err: BaseException) -> str:
    """The first line of an error's message, without terminal colour codes, at most 200 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 200 else line[:197] + "..."


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


def read_checked(path: str | Path, kind: str, fmt: str, legacy: str | None = None) -> tuple[dict[str, str],
                                                                                         dict[str, np.ndarray]]:
    """Metadata and tensors of a ``kind`` file written by ``write_checked``; ``ValueError`` naming the file if it is
    unreadable, of another format, or fails or lacks its checksum. Only ``legacy``, an older format whose checksum
    was optional, loads without one, with a ``UserWarning`` saying what is not verified."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as err:  # TypeError: a dtype numpy cannot hold
        raise ValueError(f"{path} is not a readable safetensors {kind} (truncated or corrupt?): {err}") from None
    found = metadata.get("format")
    if found is None or found not in (fmt, legacy):
        raise ValueError(f"{path} is not an llmdual {kind}: format {found!r}, expected {fmt!r}")
    stored = metadata.pop(CHECKSUM_KEY, None)
    if stored is None and found != legacy:
        raise ValueError(f"{path} has no checksum: a {found} {kind} must carry one ({CHECKSUM_KEY!r} in its "
                         "metadata), so it was edited or not written by llmdual")
    if stored is None:
        warnings.warn(f"{path} has no checksum (a {found} {kind}, from before checksums were required): its tensors "
                      "and metadata are not verified, so a flipped bit or an edited header that still parses would "
                      f"load unnoticed; saving it again writes {fmt}, which always carries one", UserWarning,
                      stacklevel=3)
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
    metadata, weights = read_checked(path, "model file", MODEL_FORMAT, legacy=LEGACY_MODEL_FORMAT)
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
    return read_checked(path, "optimizer state", OPTIMIZER_FORMAT)[1]
