"""The decoding protocol every engine implements: ``Decoder`` (prefill, then one step per token), the
``StepDecoder`` base that builds it on one ``_run`` method, and the left-padding position rule."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol, runtime_checkable

import numpy as np


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
