"""The decoding protocol every engine implements: ``Decoder`` (prefill, then one step per token); its two
bases, ``StaticDecoder`` (the native backends: a pre-allocated KV cache written in place, and a whole greedy
generation in one call) and ``StepDecoder`` (a cache grown by concatenation, as the ONNX export's graph takes
it); ``greedy``, the one greedy rule every engine meets; and the left-padding position rule."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from llmdual.core.config import Config
from llmdual.core.sampling import sample_next
from llmdual.core.validate import check_inputs

MIN_CACHE = 16  # the smallest static cache: shorter generations share its compiled step


@runtime_checkable
class Decoder(Protocol):
    """What ``generate`` needs from an engine. Arrays are numpy: ids and masks int64, logits float32 (float64 from the
    float64 reference backend).

    ``attention_mask`` always covers every token so far (prompt padding 0, everything else 1); the state is
    opaque to ``generate`` (a KV cache, or the ids so far for an engine that recomputes).
    """

    max_seq_len: int

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                max_len: int | None = None) -> tuple[np.ndarray, object]:
        """Left-padded prompts [B, T] -> logits of the last position [B, V] and the state; ``max_len``: the
        positions the generation will fill (prompt + new tokens - 1), for engines that allocate ahead."""
        ...

    def step(self, next_ids: np.ndarray, attention_mask: np.ndarray, state: object) -> tuple[np.ndarray, object]:
        """One new token per row [B, 1] and the mask [B, T_so_far] -> logits [B, V] and the new state."""
        ...


@runtime_checkable
class GreedyDecoder(Decoder, Protocol):
    """A ``Decoder`` that also runs a whole greedy generation in one call, without a numpy round trip per token."""

    def greedy(self, input_ids: np.ndarray, attention_mask: np.ndarray, new_tokens: int,
               eot_id: int | None = None) -> np.ndarray:
        """The tokens ``sample_steps`` gives for the same arguments, int64 [B, new_tokens]."""
        ...


def greedy(decoder: Decoder, input_ids: np.ndarray, attention_mask: np.ndarray, new_tokens: int,
           eot_id: int | None = None) -> np.ndarray:
    """Greedy tokens [B, new_tokens] after left-padded prompts: in one call where the decoder has a loop of its
    own (``GreedyDecoder``), else prefill and steps (``sample_steps`` at temperature 0)."""
    if isinstance(decoder, GreedyDecoder):
        return decoder.greedy(input_ids, attention_mask, new_tokens, eot_id)
    return sample_steps(decoder, input_ids, attention_mask, new_tokens, eot_id)


def sample_steps(decoder: Decoder, input_ids: np.ndarray, attention_mask: np.ndarray, new_tokens: int,
                 eot_id: int | None = None, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0) -> np.ndarray:
    """Tokens int64 [B, new_tokens] by the shared numpy sampler (``sample_next``, its generator seeded by
    ``seed``; temperature 0: argmax, lowest id on ties), one ``step`` per token; once every row has produced
    ``eot_id`` the rest stays 0. At temperature 0 this is the rule every on-device greedy loop reproduces."""
    B = len(input_ids)
    rng = np.random.default_rng(seed)
    tokens = np.zeros((B, new_tokens), dtype=np.int64)
    done = np.zeros(B, dtype=bool)
    logits, state = decoder.prefill(input_ids, attention_mask, input_ids.shape[1] + new_tokens - 1)
    for t in range(new_tokens):
        tokens[:, t] = sample_next(logits, temperature, top_k, top_p, rng)
        if eot_id is not None:
            done |= tokens[:, t] == eot_id
        if done.all() or t == new_tokens - 1:
            break
        attention_mask = np.concatenate([attention_mask, np.ones((B, 1), dtype=attention_mask.dtype)], axis=1)
        logits, state = decoder.step(tokens[:, t : t + 1], attention_mask, state)
    return tokens


class StepDecoder(ABC):
    """A ``Decoder`` built on one method, ``_run(ids, mask, past)`` -> (last logits [B, V], state): prefill runs
    the prompts with no past; each step feeds the new token with the cache (``use_cache``), or re-runs the
    whole prefix, whose ids are then the state."""

    use_cache: bool
    max_seq_len: int

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                max_len: int | None = None) -> tuple[np.ndarray, object]:
        """Run the prompts; return the last position's logits [B, V] and the state for ``step`` (the cache
        grows as it goes, so ``max_len`` is not needed)."""
        return self._run(input_ids, attention_mask, None)

    def step(self, next_ids: np.ndarray, attention_mask: np.ndarray, state: object) -> tuple[np.ndarray, object]:
        """Feed one new token per row ([B, 1]); ``attention_mask`` covers every token so far, new one included."""
        if self.use_cache:
            return self._run(next_ids, attention_mask, state)
        return self._run(np.concatenate([state, next_ids], axis=1), attention_mask, None)

    @abstractmethod
    def _run(self, ids: np.ndarray, mask: np.ndarray, past: Any) -> tuple[np.ndarray, object]:
        """Logits of the last position [B, V] float32, and the cache after ``ids`` (with ``use_cache``) or ``ids``."""


@dataclass
class CacheState:
    """A ``StaticDecoder``'s state: the ids so far and the per-layer cache they fill (None when recomputing)."""

    ids: np.ndarray
    cache: Any


class StaticDecoder(ABC):
    """A ``Decoder`` over a static KV cache: per-layer key and value buffers [B, heads, L, head_dim] allocated
    once at ``cache_length`` of the generation's length and written in place, step t's token at slot
    prompt width + t; a step past L moves the cache into the next length bucket. Position ids and the mask
    over the L slots come from the attention mask (left padding: ``positions``). Inputs are validated here,
    before any compiled code runs. Without ``use_cache`` every step re-runs the whole prefix into a new cache."""

    use_cache: bool
    max_seq_len: int
    config: Config

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                max_len: int | None = None) -> tuple[np.ndarray, object]:
        """Run the prompts into a cache sized for ``max_len`` positions (default: the prompt and one step)."""
        T = input_ids.shape[1]
        return self._fill(input_ids, attention_mask, max(max_len or 0, min(T + 1, self.max_seq_len), T))

    def step(self, next_ids: np.ndarray, attention_mask: np.ndarray, state: object) -> tuple[np.ndarray, object]:
        """Write one new token per row ([B, 1]) at the next position; ``attention_mask`` covers every token so far."""
        ids = np.concatenate([state.ids, next_ids], axis=1)
        if not self.use_cache:
            return self._fill(ids, attention_mask, ids.shape[1])
        start = state.ids.shape[1]
        check_inputs(next_ids, self.config, attention_mask, start, padded_positions(attention_mask, 1))
        cache = state.cache
        if start >= self._length(cache):
            cache = self._grow(cache, cache_length(start + 1, self.max_seq_len))
        logits, cache = self._forward(next_ids, slot_mask(attention_mask, self._length(cache)),
                                      positions(attention_mask, 1), cache, start)
        return logits, CacheState(ids, cache)

    def greedy(self, input_ids: np.ndarray, attention_mask: np.ndarray, new_tokens: int,
               eot_id: int | None = None) -> np.ndarray:
        """``sample_steps``' tokens [B, new_tokens] with the prefill and every step run by the backend's own loop
        over one static cache (validated once here: later ids are argmaxes, later positions follow the last);
        without ``use_cache``, ``sample_steps`` itself."""
        B, T = input_ids.shape
        if isinstance(new_tokens, bool) or not isinstance(new_tokens, (int, np.integer)) or new_tokens < 1:
            raise ValueError(f"new_tokens must be an integer >= 1, got {new_tokens!r}")
        if T + new_tokens - 1 > self.max_seq_len:
            raise ValueError(f"prompt of {T} tokens + {new_tokens} new tokens needs {T + new_tokens - 1} positions "
                             f"> max_seq_len {self.max_seq_len}")
        if not self.use_cache:
            return sample_steps(self, input_ids, attention_mask, new_tokens, eot_id)
        check_inputs(input_ids, self.config, attention_mask, 0, padded_positions(attention_mask, T))
        length = cache_length(T + new_tokens - 1, self.max_seq_len)
        tokens = self._greedy(input_ids, slot_mask(attention_mask, length), positions(attention_mask, T),
                              self._allocate(B, length), int(new_tokens), -1 if eot_id is None else int(eot_id))
        return tokens[:, :new_tokens]

    def _fill(self, ids: np.ndarray, mask: np.ndarray, needed: int) -> tuple[np.ndarray, CacheState]:
        """Run ``ids`` from position 0 into a new cache of ``cache_length(needed)`` slots."""
        B, T = ids.shape
        check_inputs(ids, self.config, mask, 0, padded_positions(mask, T))
        length = cache_length(needed, self.max_seq_len)
        logits, cache = self._forward(ids, slot_mask(mask, length), positions(mask, T), self._allocate(B, length), 0)
        return logits, CacheState(ids, cache if self.use_cache else None)

    @abstractmethod
    def _allocate(self, batch: int, length: int) -> Any:
        """A zeroed cache: per layer a (keys, values) pair of [batch, heads, length, head_dim] buffers."""

    @abstractmethod
    def _grow(self, cache: Any, length: int) -> Any:
        """The cache moved into buffers of ``length`` slots (its positions kept, the new ones zero)."""

    @abstractmethod
    def _length(self, cache: Any) -> int:
        """The slots the cache holds."""

    @abstractmethod
    def _forward(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, cache: Any,
                 start: int) -> tuple[np.ndarray, Any]:
        """Run ``ids`` [B, T] written at slots ``start``.. of ``cache`` with the slot mask [B, L] and position ids
        [B, T]; the last position's float32 logits [B, V] and the updated cache."""

    @abstractmethod
    def _greedy(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, cache: Any, count: int,
                eot: int) -> np.ndarray:
        """Prefill ``ids`` [B, T] into the empty ``cache`` (slot mask [B, L], positions [B, T]), then feed each
        argmax back (slot T - 1 + t, position last + t) until ``count`` tokens or every row has made ``eot``
        (-1: none): int64 [B, >= count] tokens, zeros after the stop."""


def cache_length(needed: int, max_seq_len: int) -> int:
    """Slots a static cache allocates for ``needed`` positions: the next power of two (at least ``MIN_CACHE``),
    capped at ``max_seq_len`` (unless left padding pushes ``needed`` past it), so a few shapes serve all lengths."""
    return min(max(MIN_CACHE, 1 << (needed - 1).bit_length()), max(max_seq_len, needed))


def slot_mask(mask: np.ndarray, length: int) -> np.ndarray:
    """The attention mask over every slot of a ``length``-slot cache: the tokens so far, then ones for the
    unwritten slots (never attended: a query sees only slots up to its own)."""
    slots = np.ones((mask.shape[0], length), dtype=np.int64)
    slots[:, : mask.shape[1]] = mask
    return slots


def positions(mask: np.ndarray, width: int) -> np.ndarray:
    """Position ids ``cumsum(mask) - 1`` of the last ``width`` tokens: left padding shifts every row to start at 0
    (a fresh array: a view's strides would differ step by step, and compiled graphs guard on them)."""
    return np.maximum(mask.cumsum(axis=1) - 1, 0)[:, -width:].copy()


def padded_positions(mask: np.ndarray, width: int) -> np.ndarray | None:
    """``positions`` when some row is left-padded; None when no row is (positions then follow the cache
    length, and the kernels take their unmasked fast path)."""
    if mask.all():
        return None
    return positions(mask, width)
