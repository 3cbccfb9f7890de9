"""Running llmdual ONNX exports with onnxruntime, framework-free: sessions, logits, metrics, timing, and
``OnnxDecoder``, the ``llmdual.core.decoding.Decoder`` that lets ``llmdual.generate`` decode through a session."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from llmdual.core.config import Config
from llmdual.core.decoding import StepDecoder, padded_positions
from llmdual.core.signature import step_feeds
from llmdual.core.validate import check_inputs
from llmdual.evaluate import cross_entropy_sum


def open_session(path: str | os.PathLike, threads: int | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session on ``path`` (``threads``: intra-op threads, default all cores), warnings only."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class ExportInfo:
    """What an llmdual export says about itself (its metadata and cache inputs)."""

    config: Config
    task: str
    backend: str
    kv_cache: bool


def export_info(session: ort.InferenceSession) -> ExportInfo:
    """Config, task, source backend and kind of an llmdual export; ``ValueError`` for a foreign ONNX file."""
    meta = session.get_modelmeta().custom_metadata_map
    if "llmdual.config" not in meta:
        raise ValueError("not an llmdual ONNX export: no 'llmdual.config' metadata (export it with "
                         "llmdual.onnx.export.export_onnx)")
    kv_cache = any(i.name.startswith("past.") for i in session.get_inputs())
    return ExportInfo(Config.from_json(meta["llmdual.config"]), meta["llmdual.task"], meta["llmdual.backend"], kv_cache)


def cache_feeds(
    info: ExportInfo, input_ids: np.ndarray, attention_mask: np.ndarray, past: list[np.ndarray] | None
) -> dict[str, np.ndarray]:
    """Inputs of a KV-cache export (``llmdual.core.signature.step_feeds`` for the export's config)."""
    return step_feeds(info.config, input_ids, attention_mask, past)


def logits(
    session: ort.InferenceSession, input_ids: np.ndarray, attention_mask: np.ndarray | None = None
) -> np.ndarray:
    """Float32 logits of a full forward pass through any llmdual export (a cache export runs with an empty past);
    the inputs pass ``llmdual.core.validate`` first, as they would in either native backend."""
    info = export_info(session)
    positions = _mask_positions(input_ids, attention_mask) if info.kv_cache else None  # a cache export's rule
    check_inputs(input_ids, info.config, attention_mask, 0, positions)
    return _logits(session, info, input_ids, attention_mask)


def _mask_positions(input_ids: np.ndarray, attention_mask: np.ndarray | None) -> np.ndarray | None:
    """Position ids of left-padded rows as the native decoders derive them; None when no row is padded, or when the
    arrays are too malformed to derive any (``check_inputs`` then names what is wrong)."""
    if attention_mask is None or np.ndim(input_ids) != 2 or np.ndim(attention_mask) != 2:
        return None
    return padded_positions(np.asarray(attention_mask), np.shape(input_ids)[1])


def _logits(
    session: ort.InferenceSession, info: ExportInfo, input_ids: np.ndarray, attention_mask: np.ndarray | None
) -> np.ndarray:
    """``logits`` on inputs already checked."""
    ids = np.asarray(input_ids, np.int64)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int64)
    if info.kv_cache:
        feeds = cache_feeds(info, ids, mask, None)
    elif info.task == "classifier":
        feeds = {"input_ids": ids, "attention_mask": mask}
    elif not mask.all():
        raise ValueError("this LM export has no attention_mask input, so it cannot run padded rows; "
                         "export with kv_cache=True for padded batches")
    else:
        feeds = {"input_ids": ids}
    return session.run(["logits"], feeds)[0]


def evaluate(session: ort.InferenceSession, batches: Iterable[tuple[np.ndarray, ...]]) -> dict[str, float]:
    """LM ``(x, y)`` batches: ``loss`` and ``perplexity``; classifier ``(ids, mask, labels)``: ``loss`` and
    ``accuracy``; computed from onnxruntime logits exactly as ``llmdual.evaluate`` does from native ones."""
    total, count, correct = 0.0, 0, 0
    for ids, *rest in batches:
        mask, targets = (rest[0], rest[1]) if len(rest) == 2 else (None, rest[0])
        z = logits(session, ids, mask)
        s, n = cross_entropy_sum(z, targets)
        total, count = total + s, count + n
        correct += int((z.argmax(-1) == np.asarray(targets)).sum())
    if not count:
        raise ValueError("no targets to evaluate: the batches are empty or every target is -100")
    loss = total / count
    if export_info(session).task == "lm":
        return {"loss": loss, "perplexity": float(np.exp(loss))}
    return {"loss": loss, "accuracy": correct / count}


def throughput(run: Callable[[], object], tokens: int, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Tokens per second of each of ``repeats`` timed calls of ``run`` (after ``warmup`` untimed ones)."""
    for _ in range(warmup):
        run()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(tokens / (time.perf_counter() - start))
    return rates


class OnnxDecoder(StepDecoder):
    """``llmdual.core.decoding.Decoder`` over a session of an llmdual LM export: a KV-cache export feeds its cache
    back step by step (or, with ``use_cache=False``, recomputes from an empty one); a plain export recomputes
    the whole prefix every step, and takes unpadded prompts only (it has no attention_mask input)."""

    def __init__(self, session: ort.InferenceSession | str | os.PathLike, use_cache: bool = True):
        self.session = session if isinstance(session, ort.InferenceSession) else open_session(session)
        self.info = export_info(self.session)
        if self.info.task != "lm":
            raise ValueError(f"generation needs a task 'lm' export, got task {self.info.task!r}")
        self.use_cache = use_cache and self.info.kv_cache
        self.max_seq_len = self.info.config.max_seq_len

    def _run(self, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray] | None) -> tuple[np.ndarray, object]:
        """One session call: the cache export with ``past`` (None: empty), or a full pass of the plain one; the
        inputs pass ``llmdual.core.validate`` first, with the same arguments as the native decoders'."""
        past_len = 0 if past is None else past[0].shape[2]
        check_inputs(ids, self.info.config, mask, past_len, _mask_positions(ids, mask))
        if not self.use_cache:
            return _logits(self.session, self.info, ids, mask)[:, -1], ids
        out = self.session.run(None, cache_feeds(self.info, ids, mask, past))
        return out[0][:, -1], out[1:]
