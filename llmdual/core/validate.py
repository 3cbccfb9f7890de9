"""The one gate for what enters a model: ids, attention masks, sequence length, training targets and weights.

Pure numpy (no framework import), so both backends and the onnxruntime runner call the same functions and
refuse the same inputs with the same message. Run on concrete values: a graph cannot look at them, and
accelerators silently return zeros for bad gathers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmdual.core.config import Config
from llmdual.core.weights import check_weights

__all__ = ["IGNORE_INDEX", "check_ids", "check_inputs", "check_labels", "check_mask", "check_targets",
           "check_training_batch", "check_weights", "index_array"]

IGNORE_INDEX = -100  # a target the loss skips (PyTorch's ignore_index)


def index_array(array: Any) -> np.ndarray:
    """``array`` as int64 when it holds integers; any other dtype unchanged, for the checks to refuse by name."""
    array = np.asarray(array)
    return array.astype(np.int64, copy=False) if _is_integer(array) else array


def check_inputs(
    input_ids: Any,
    config: Config,
    attention_mask: Any = None,
    past_len: int = 0,
    positions: Any = None,
) -> None:
    """Refuse bad ids, a bad mask, or more positions than ``max_seq_len``; ``ValueError`` naming the problem.

    ``past_len`` counts cached tokens; ``positions`` are explicit position ids (left-padded decoding), whose
    largest value then bounds the length instead of ``past_len + T``.
    """
    ids = _id_array(input_ids, "input_ids")
    if attention_mask is not None:  # before the length: positions are derived from the mask
        check_mask(attention_mask, (ids.shape[0], past_len + ids.shape[1]), past_len)
    check_ids(ids, config, past_len, positions)


def check_ids(input_ids: Any, config: Config, past_len: int = 0, positions: Any = None) -> np.ndarray:
    """The ids as an array after checking dtype, shape, length and range against ``config``."""
    ids = _id_array(input_ids, "input_ids")
    _check_length(ids.shape[1], config, past_len, positions)
    _check_range(ids, config.vocab_size, "token id", "vocab_size")
    return ids


def check_mask(attention_mask: Any, shape: tuple[int, ...], past_len: int = 0) -> np.ndarray:
    """The mask as an array after checking its shape, its values (only 0 and 1) and one real token per row."""
    mask = np.asarray(attention_mask)
    if mask.shape != tuple(shape):
        covers = "cached + new tokens" if past_len else "sequence"
        raise ValueError(f"attention_mask must have the shape of the ids (batch, {covers}) = {tuple(shape)}, "
                         f"got {mask.shape}")
    if mask.dtype != np.bool_ and not (_is_integer(mask) or np.issubdtype(mask.dtype, np.floating)):
        raise ValueError(f"attention_mask must be 0/1 integers or bools, got a {_kind(mask)} array")
    odd = mask[(mask != 0) & (mask != 1)]
    if odd.size:
        raise ValueError(f"attention_mask must hold only 0 (padding) and 1 (real token), got {odd.flat[0].item()!r}")
    empty = np.flatnonzero(~mask.astype(bool).any(axis=1))
    if empty.size:
        raise ValueError(f"attention_mask row {empty[0]} is all 0: every row needs at least one real token (1)")
    return mask


def check_targets(
    targets: Any, shape: tuple[int, ...], bound: int | None, micro_batches: int = 1, name: str = "targets"
) -> np.ndarray:
    """Targets of ``shape`` in ``[0, bound)`` or ``IGNORE_INDEX`` (no upper bound when ``bound`` is None), with
    at least one counted target in each of ``micro_batches`` equal row groups; returns them as an array."""
    array = np.asarray(targets)
    if not _is_integer(array):
        raise ValueError(f"{name} must be integers (class ids, or {IGNORE_INDEX} to skip), got a {_kind(array)} "
                         f"array")
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {array.shape}")
    invalid = array[(array != IGNORE_INDEX) & ((array < 0) | (array >= (bound if bound is not None else np.inf)))]
    if invalid.size:
        allowed = f"[0, {bound})" if bound is not None else "non-negative"
        raise ValueError(f"{name} value {int(invalid.flat[0])} out of range: must be {allowed} or {IGNORE_INDEX} "
                         f"(ignored)")
    groups = array.reshape(micro_batches, -1) if array.size else array.reshape(micro_batches, 0)
    uncounted = np.flatnonzero(~(groups != IGNORE_INDEX).any(axis=1))
    if uncounted.size:
        where = "" if micro_batches == 1 else f" of micro-batch {uncounted[0]} (of {micro_batches})"
        raise ValueError(f"every one of the {name}{where} is {IGNORE_INDEX} (ignored): the loss needs at least one "
                         f"counted target")
    return array


def check_labels(
    targets: Any, task: str, ids_shape: tuple[int, ...], config: Config | None = None, micro_batches: int = 1
) -> np.ndarray:
    """LM targets (B, T) in ``[0, vocab_size)`` or classifier labels (B,) in ``[0, num_classes)``, ``IGNORE_INDEX``
    allowed (upper bounds checked only with ``config``), as in ``check_targets``."""
    if task == "lm":
        return check_targets(targets, ids_shape, config and config.vocab_size, micro_batches, "targets")
    return check_targets(targets, ids_shape[:1], config and config.num_classes, micro_batches, "labels")


def check_training_batch(
    ids: Any, targets: Any, task: str, config: Config | None = None, mask: Any = None, micro_batches: int = 1
) -> None:
    """One training step's arrays: integer ids (checked against ``config`` when given), a 0/1 mask with a real
    token per row, and targets with at least one counted per micro-batch."""
    ids = _id_array(ids, "input_ids")
    if mask is not None:
        check_mask(mask, ids.shape)
    if config is not None:
        check_ids(ids, config)
    check_labels(targets, task, ids.shape, config, micro_batches)


def _id_array(input_ids: Any, name: str) -> np.ndarray:
    """A non-empty 2-D integer array, or ``ValueError`` saying which of those it is not."""
    ids = np.asarray(input_ids)
    if not _is_integer(ids):
        raise ValueError(f"{name} must be an integer array (token ids), got a {_kind(ids)} array: float, bool and "
                         f"complex ids are refused, not truncated")
    if ids.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, sequence), got shape {ids.shape}")
    if ids.size == 0:
        raise ValueError(f"{name} is empty (shape {ids.shape}): a batch needs at least one row of at least one token")
    return ids


def _check_length(width: int, config: Config, past_len: int, positions: Any) -> None:
    """``ValueError`` when the sequence needs a position past ``max_seq_len``."""
    if positions is not None:
        needed, detail = int(np.max(positions)) + 1, ""
    else:
        needed, detail = past_len + width, (f" ({past_len} cached + {width} new)" if past_len else "")
    if needed > config.max_seq_len:
        raise ValueError(f"sequence too long: {needed} tokens{detail} > max_seq_len {config.max_seq_len}")


def _check_range(ids: np.ndarray, bound: int, what: str, field: str) -> None:
    """``ValueError`` naming the first id outside ``[0, bound)``."""
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= bound:
        bad = low if low < 0 else high
        raise ValueError(f"{what} {bad} out of range: ids must be in [0, {bound}) ({field} {bound})")


def _kind(array: np.ndarray) -> str:
    """The kind of an array's dtype in words (not its width, which frameworks may change on the way in)."""
    kinds = {"f": "floating-point", "b": "bool", "c": "complex", "U": "string", "S": "bytes", "O": "object"}
    return kinds.get(array.dtype.kind, str(array.dtype))


def _is_integer(array: np.ndarray) -> bool:
    """True for integer dtypes (bool is not one)."""
    return np.issubdtype(array.dtype, np.integer)
