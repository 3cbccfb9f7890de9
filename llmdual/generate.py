"""Text generation for every backend through one small protocol, ``Decoder``: prefill, then one step per token.

``generate`` owns everything backend-neutral (prompt handling, left padding, sampling with the shared
``llmdual.core.sampling.sample_next`` and a seeded numpy generator, stopping at end-of-text), so greedy and seeded
sampling give the same tokens whichever backend, or any other engine implementing ``Decoder``, runs the model.
Greedy generation goes to the engine's own loop where it has one (``llmdual.core.decoding.greedy``), held to the
same argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmdual.contract import backend_of
from llmdual.core.decoding import Decoder, greedy, sample_steps
from llmdual.core.sampling import check_args


def decoder_for(target: Any, use_cache: bool = True) -> Decoder:
    """A ``Decoder`` for an llmdual model of either backend, an onnxruntime session of an llmdual LM export,
    or ``target`` itself if it already is one."""
    if isinstance(target, Decoder):
        return target
    if type(target).__module__.startswith("onnxruntime."):
        raise TypeError("an onnxruntime session decodes through llmdual.onnx.OnnxDecoder(session): "
                        "pass llmdual.generate(OnnxDecoder(session), ...)")
    return backend_of(target, "decoding").decoder(target, use_cache)


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
    if isinstance(prompt, Sequence) and prompt and all(_is_id(p) for p in prompt):
        return [_id_row(prompt, 0)], True, False
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, (Sequence, np.ndarray)) for p in prompt):
        return [_id_row(p, i) for i, p in enumerate(prompt)], False, False
    raise ValueError(f"prompt must be a str, a list of str (with a tokenizer), token ids (a list of ints or a 1-D "
                     f"array) or a batch of them (list of lists or a 2-D array), got {type(prompt).__name__}")


def _is_id(value: Any) -> bool:
    """True for a Python or numpy integer (bools are not token ids)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _id_row(row: Any, index: int) -> list[int]:
    """One prompt row as a list of ints; ``ValueError`` for anything but integer token ids (no truncation)."""
    if isinstance(row, str) or not all(_is_id(v) for v in np.asarray(row, dtype=object).ravel()):
        raise ValueError(f"prompt row {index} must hold integer token ids, got {row!r:.80}")
    if np.ndim(row) != 1:
        raise ValueError(f"prompt row {index} must be a 1-D sequence of token ids, got shape {np.shape(row)}")
    return [int(v) for v in row]


def _vocab_size(decoder: Decoder) -> int | None:
    """The model's vocab_size where the decoder tells it (native decoders and ONNX exports do), else None."""
    config = getattr(decoder, "config", None) or getattr(getattr(decoder, "info", None), "config", None)
    return getattr(config, "vocab_size", None)


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
    decoder = decoder_for(model, use_cache)
    vocab_size = _vocab_size(decoder)
    if tokenizer is not None and vocab_size is not None:
        tokenizer.check_fits(vocab_size)
    rows, single, text = _prompt_rows(prompt, tokenizer)
    empty = [i for i, r in enumerate(rows) if not len(r)]
    if empty:
        raise ValueError(f"prompt row {empty[0]} is empty; every prompt needs at least one token")
    ids, mask = left_pad(rows, tokenizer.pad_id if tokenizer is not None else 0)
    if ids.shape[1] + max_new_tokens - 1 > decoder.max_seq_len:
        raise ValueError(f"prompt of {ids.shape[1]} tokens + {max_new_tokens} new tokens needs "
                         f"{ids.shape[1] + max_new_tokens - 1} positions > max_seq_len {decoder.max_seq_len}")
    if eot_id is None and tokenizer is not None:
        eot_id = tokenizer.eot_id
    check_args(temperature, top_k, top_p)
    stop_id = eot_id if stop_at_eot else None
    if temperature:
        out = sample_steps(decoder, ids, mask, max_new_tokens, stop_id, temperature, top_k, top_p, seed)
    else:  # the shared sampler's argmax, in one call where the engine loops on its own
        out = greedy(decoder, ids, mask, max_new_tokens, stop_id)
    ended = out == stop_id if stop_id is not None else np.zeros_like(out, dtype=bool)
    lengths = np.where(ended.any(axis=1), ended.argmax(axis=1), max_new_tokens)
    results = [out[i, : lengths[i]] for i in range(len(rows))]
    if text:
        results = [tokenizer.decode(r) for r in results]
    return results[0] if single else results

