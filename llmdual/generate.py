"""Text generation for every backend through one small protocol, ``Decoder``: prefill, then one step per token.

``generate`` owns everything backend-neutral (prompt handling, left padding, sampling with the shared
``llmdual.sampling.sample_next`` and a seeded numpy generator, stopping at end-of-text), so greedy and seeded
sampling give the same tokens whichever backend, or any other engine implementing ``Decoder``, runs the model.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from llmdual.backend import backend_of, load_backend
from llmdual.sampling import sample_next

# backend name -> module defining ``Decoder(model, use_cache)``; ``decoder_for`` dispatches on ``backend_of``.
DECODERS = {
    "torch": "llmdual.torch_backend.decode",
    "keras": "llmdual.keras_backend.decode",
}


@runtime_checkable
class Decoder(Protocol):
    """What ``generate`` needs from an engine. Arrays are numpy: ids and masks int64, logits float32.

    ``attention_mask`` always covers every token so far (prompt padding 0, everything else 1); the state is
    opaque to ``generate`` (a KV cache, or the ids so far for an engine that recomputes).
    """

    max_seq_len: int

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, object]:
        """Left-padded prompts [B, T] -> logits of the last position [B, V] and the state."""
        ...

    def step(self, next_ids: np.ndarray, attention_mask: np.ndarray, state: object) -> tuple[np.ndarray, object]:
        """One new token per row [B, 1] and the mask [B, T_so_far] -> logits [B, V] and the new state."""
        ...


class StepDecoder(ABC):
    """A ``Decoder`` built on one method, ``_run(ids, mask, past)`` -> (last logits [B, V], state): prefill runs
    the prompts with no past; each step feeds the new token with the cache (``use_cache``), or re-runs the
    whole prefix, whose ids are then the state."""

    use_cache: bool
    max_seq_len: int

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, object]:
        """Run the prompts; return the last position's logits [B, V] and the state for ``step``."""
        return self._run(input_ids, attention_mask, None)

    def step(self, next_ids: np.ndarray, attention_mask: np.ndarray, state: object) -> tuple[np.ndarray, object]:
        """Feed one new token per row ([B, 1]); ``attention_mask`` covers every token so far, new one included."""
        if self.use_cache:
            return self._run(next_ids, attention_mask, state)
        return self._run(np.concatenate([state, next_ids], axis=1), attention_mask, None)

    @abstractmethod
    def _run(self, ids: np.ndarray, mask: np.ndarray, past: Any) -> tuple[np.ndarray, object]:
        """Logits of the last position [B, V] float32, and the cache after ``ids`` (with ``use_cache``) or ``ids``."""


def padded_positions(mask: np.ndarray, width: int) -> np.ndarray | None:
    """Position ids ``cumsum(mask) - 1`` of the last ``width`` tokens when some row is left-padded; None when
    no row is (positions then follow the cache length, and the kernels take their unmasked fast path)."""
    if mask.all():
        return None
    return np.maximum(mask.cumsum(axis=1) - 1, 0)[:, -width:]


def decoder_for(target: Any, use_cache: bool = True) -> Decoder:
    """A ``Decoder`` for an llmdual model of either backend, an onnxruntime session of an llmdual LM export,
    or ``target`` itself if it already is one."""
    if isinstance(target, Decoder):
        return target
    if type(target).__module__.startswith("onnxruntime."):
        from llmdual.onnx_runtime import OnnxDecoder

        return OnnxDecoder(target, use_cache)
    backend = backend_of(target)
    load_backend(backend)
    return importlib.import_module(DECODERS[backend]).Decoder(target, use_cache)


def _prompt_rows(prompt: Any, tokenizer: Any) -> tuple[list[list[int]], bool, bool]:
    """Token rows of ``prompt``, whether it was a single prompt, and whether it was text."""
    if isinstance(prompt, str) or (isinstance(prompt, Sequence) and prompt and all(isinstance(p, str) for p in prompt)):
        if tokenizer is None:
            raise ValueError("a text prompt needs tokenizer=...; or pass token ids")
        single = isinstance(prompt, str)
        return [tokenizer.encode(p) for p in ([prompt] if single else prompt)], single, True
    if isinstance(prompt, np.ndarray):
        if prompt.ndim not in (1, 2) or not np.issubdtype(prompt.dtype, np.integer):
            raise ValueError(f"an id prompt must be a 1-D or 2-D integer array, got shape {prompt.shape} "
                             f"dtype {prompt.dtype}")
        return ([prompt.tolist()] if prompt.ndim == 1 else prompt.tolist()), prompt.ndim == 1, False
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, (int, np.integer)) for p in prompt):
        return [list(prompt)], True, False
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, (Sequence, np.ndarray)) for p in prompt):
        return [list(p) for p in prompt], False, False
    raise ValueError(f"prompt must be a str, a list of str (with a tokenizer), token ids (a list of ints or a 1-D "
                     f"array) or a batch of them (list of lists or a 2-D array), got {type(prompt).__name__}")


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-aligned ids [B, T] and their attention mask (0 on the left padding)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
    return ids, mask


def generate(
    model: Any,
    prompt: Any,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    tokenizer: Any = None,
    use_cache: bool = True,
    stop_at_eot: bool = True,
    eot_id: int | None = None,
) -> str | list[str] | np.ndarray | list[np.ndarray]:
    """Continue ``prompt`` by up to ``max_new_tokens`` tokens with an llmdual model or any ``Decoder``.

    ``prompt``: text (needs ``tokenizer``), a list of texts, ids (list or 1-D array) or a batch of id rows
    (ragged allowed: left-padded with a mask). Returns the continuations only, without the end-of-text token
    that stopped them: text for text prompts, else int64 arrays; one item for a single prompt, else a list.
    ``temperature`` 0 is greedy; otherwise ``top_k``/``top_p`` filter and ``seed`` fixes the draws.
    ``eot_id`` defaults to the tokenizer's; without either, generation runs the full length.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    rows, single, text = _prompt_rows(prompt, tokenizer)
    empty = [i for i, r in enumerate(rows) if not len(r)]
    if empty:
        raise ValueError(f"prompt row {empty[0]} is empty; every prompt needs at least one token")
    decoder = decoder_for(model, use_cache)
    ids, mask = left_pad(rows, tokenizer.pad_id if tokenizer is not None else 0)
    if ids.shape[1] + max_new_tokens - 1 > decoder.max_seq_len:
        raise ValueError(f"prompt of {ids.shape[1]} tokens + {max_new_tokens} new tokens needs "
                         f"{ids.shape[1] + max_new_tokens - 1} positions > max_seq_len {decoder.max_seq_len}")
    if eot_id is None and tokenizer is not None:
        eot_id = tokenizer.eot_id
    stop = stop_at_eot and eot_id is not None
    rng = np.random.default_rng(seed)
    out = np.zeros((len(rows), max_new_tokens), dtype=np.int64)
    lengths = np.full(len(rows), max_new_tokens)
    done = np.zeros(len(rows), dtype=bool)
    logits, state = decoder.prefill(ids, mask)
    for t in range(max_new_tokens):
        out[:, t] = sample_next(logits, temperature, top_k, top_p, rng)
        if stop:
            ended = ~done & (out[:, t] == eot_id)
            lengths[ended], done = t, done | ended
        if done.all() or t == max_new_tokens - 1:
            break
        mask = np.concatenate([mask, np.ones((len(rows), 1), dtype=np.int64)], axis=1)
        logits, state = decoder.step(out[:, t : t + 1], mask, state)
    results = [out[i, : lengths[i]] for i in range(len(rows))]
    if text:
        results = [tokenizer.decode(r) for r in results]
    return results[0] if single else results
