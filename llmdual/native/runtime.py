"""Native exports at work in this process: ``load`` one (``Artefact``), its logits, and ``NativeDecoder``, the
``llmdual.core.decoding.Decoder`` that lets ``llmdual.generate`` decode through it, as ``OnnxDecoder`` does for ONNX."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llmdual.contract import backend
from llmdual.core.config import Config
from llmdual.core.decoding import StepDecoder, padded_positions
from llmdual.core.io import one_line, read_manifest
from llmdual.core.signature import step_feeds
from llmdual.core.validate import check_inputs
from llmdual.native.export import FORMATS


@dataclass(frozen=True)
class Artefact:
    """A loaded native export: ``run(feeds)`` (by input name, outputs in signature order) and what it says about
    itself."""

    path: str
    format: str
    config: Config
    task: str
    backend: str
    kv_cache: bool
    run: Callable[[dict[str, np.ndarray]], list[np.ndarray]]

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """Float32 logits of a full forward pass (a cache export runs with an empty past), inputs checked first."""
        check_inputs(input_ids, self.config, attention_mask, 0, _positions(input_ids, attention_mask))
        return self._logits(input_ids, attention_mask)

    def _logits(self, input_ids: np.ndarray, attention_mask: np.ndarray | None) -> np.ndarray:
        ids = np.asarray(input_ids, np.int64)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int64)
        if self.kv_cache:
            return self.run(step_feeds(self.config, ids, mask, None))[0]
        if self.task == "classifier":
            return self.run({"input_ids": ids, "attention_mask": mask})[0]
        if not mask.all():
            raise ValueError("this LM export has no attention_mask input, so it cannot run padded rows; "
                             "export with kv_cache=True for padded batches")
        return self.run({"input_ids": ids})[0]


def load(path: str | os.PathLike, format: str) -> Artefact:
    """Load the native export at ``path`` written as ``format`` (see ``llmdual.native.FORMATS``); one-line
    ``ValueError`` naming the path and the format if it is not such an export (another format, a plain file,
    truncated or corrupt)."""
    if format not in FORMATS:
        raise ValueError(f"unknown native format {format!r}; choose one of {', '.join(FORMATS)}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {format} export at {path}")
    name, spec = FORMATS[format]
    if (spec.kind == "folder") != os.path.isdir(path):
        raise ValueError(f"{path} is not a {format} export: it is a {'folder' if os.path.isdir(path) else 'file'} "
                         f"and a {format} export is a {spec.suffix + ' ' if spec.suffix else ''}{spec.kind}")
    manifest = read_manifest(path) if spec.kind == "folder" else None
    if manifest is not None and manifest["format"] != format:
        raise ValueError(f"{path} is a {manifest['format']} export, not {format}: load it with "
                         f"format={manifest['format']!r}")
    try:
        run, meta = backend(name).load_native(path, format)
        said = meta.get("llmdual.format")
        if said == format:
            return Artefact(path, format, Config.from_json(meta["llmdual.config"]), meta["llmdual.task"],
                            meta["llmdual.backend"], meta["llmdual.kv_cache"] == "1", run)
    except (ImportError, MemoryError):  # a missing framework or memory is not the file's fault
        raise
    # The loaders raise whatever their parser met (RuntimeError, BadZipFile, OSError, TensorFlow's errors...).
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{path} is not a readable {format} export (another format, truncated or corrupt?): "
                         f"{one_line(err)}") from None
    raise ValueError(f"{path} is not an llmdual {format} export (it says {said!r})")


def _positions(input_ids: np.ndarray, attention_mask: np.ndarray | None) -> np.ndarray | None:
    """Position ids of left-padded rows as the native decoders derive them; None when no row is padded or the
    arrays are too malformed to derive any (``check_inputs`` then names what is wrong)."""
    if attention_mask is None or np.ndim(input_ids) != 2 or np.ndim(attention_mask) != 2:
        return None
    return padded_positions(np.asarray(attention_mask), np.shape(input_ids)[1])


class NativeDecoder(StepDecoder):
    """``llmdual.core.decoding.Decoder`` over a loaded LM export: a KV-cache export feeds its cache back step by step
    (or, with ``use_cache=False``, recomputes from an empty one); a plain export recomputes the whole prefix
    every step, and takes unpadded prompts only (it has no attention_mask input)."""

    def __init__(self, artefact: Artefact, use_cache: bool = True):
        if artefact.task != "lm":
            raise ValueError(f"generation needs a task 'lm' export, got task {artefact.task!r}")
        self.artefact = artefact
        self.use_cache = use_cache and artefact.kv_cache
        self.max_seq_len = artefact.config.max_seq_len

    def _run(self, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray] | None) -> tuple[np.ndarray, object]:
        """One call of the export, inputs checked with the same arguments as the native decoders'."""
        past_len = 0 if past is None else past[0].shape[2]
        check_inputs(ids, self.artefact.config, mask, past_len, _positions(ids, mask))
        if not self.use_cache:
            return self.artefact._logits(ids, mask)[:, -1], ids
        out = self.artefact.run(step_feeds(self.artefact.config, ids, mask, past))
        return out[0][:, -1], out[1:]
