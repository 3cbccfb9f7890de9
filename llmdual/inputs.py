"""Checks on model inputs, shared by both backends so the errors read the same whichever one raises."""

from __future__ import annotations

import numpy as np

from llmdual.config import Config


def check_inputs(input_ids: np.ndarray, config: Config, past_len: int = 0, check_length: bool = True) -> None:
    """Raise ``ValueError`` for ids outside ``[0, vocab_size)`` or a sequence longer than ``max_seq_len``.

    Run eagerly on concrete values: gathers on accelerators silently return zeros for bad ids.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, sequence), got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be integers, got dtype {ids.dtype}")
    if check_length and past_len + ids.shape[1] > config.max_seq_len:
        raise ValueError(
            f"sequence too long: {past_len + ids.shape[1]} tokens"
            + (f" ({past_len} cached + {ids.shape[1]} new)" if past_len else "")
            + f" > max_seq_len {config.max_seq_len}"
        )
    if ids.size:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} out of range: ids must be in [0, {config.vocab_size})")
