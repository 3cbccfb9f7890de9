"""Decoding steps for a NumPy GPT behind ``llmdual.core.decoding.Decoder``. Mirrors ``llmdual/backends/torch/decode.py``.

Numpy in, numpy out, over a static KV cache (``llmdual.core.decoding.StaticDecoder``): per-layer float64 buffers
allocated once and written in place in ``forward_static``. The logits are float64, the reference's precision
(the sampler computes in float64 anyway). Nothing compiles: ``compile`` is accepted for the protocol and ignored.
"""

from __future__ import annotations

import numpy as np

from llmdual.backends.numpy.model import GPT, KVCache
from llmdual.core.decoding import StaticDecoder
from llmdual.core.validate import index_array


class Decoder(StaticDecoder):
    """Prefill and step a causal LM over its static KV cache (``use_cache``) or by recomputing the whole prefix."""

    def __init__(self, model: GPT, use_cache: bool = True, compile: bool = False):
        if model.task != "lm":
            raise ValueError(f"generation needs a task 'lm' model, got task {model.task!r}")
        self.model, self.use_cache, self.config = model, use_cache, model.config
        self.max_seq_len = model.config.max_seq_len

    def _allocate(self, batch: int, length: int) -> KVCache:
        c = self.config
        shape = (batch, c.kv_heads, length, c.head_dim)
        return [(np.zeros(shape), np.zeros(shape)) for _ in range(c.n_layers)]

    def _grow(self, cache: KVCache, length: int) -> KVCache:
        extra = length - self._length(cache)
        return [tuple(np.pad(buffer, ((0, 0), (0, 0), (0, extra), (0, 0))) for buffer in layer) for layer in cache]

    def _length(self, cache: KVCache) -> int:
        return cache[0][0].shape[2]

    def _forward(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, cache: KVCache,
                 start: int) -> tuple[np.ndarray, KVCache]:
        """One ``forward_static`` call: the last position's float64 logits and the cache."""
        return self.model.forward_static(index_array(ids), cache, start, index_array(mask), index_array(positions))

    def _greedy(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, cache: KVCache, count: int,
                eot: int) -> np.ndarray:
        """The prefill, then up to ``count - 1`` steps fed their own argmax (lowest id on ties, as the numpy
        sampler); stops early once every row has made ``eot``."""
        T = ids.shape[1]
        logits, cache = self._forward(ids, mask, positions, cache, 0)
        token = logits.argmax(axis=-1)[:, None]
        tokens, done, last = [token], token == eot, positions[:, -1:]
        for t in range(1, count):
            if eot >= 0 and done.all():
                break
            logits, cache = self._forward(token, mask, last + t, cache, T - 1 + t)
            token = logits.argmax(axis=-1)[:, None]
            tokens.append(token)
            done |= token == eot
        out = np.concatenate(tokens, axis=1)
        return np.pad(out, ((0, 0), (0, count - out.shape[1])))


def decoder(model: GPT, use_cache: bool = True, compile: bool = False) -> Decoder:
    """The contract's decoder: prefill and step ``model`` over its static KV cache (``use_cache``) or by
    recomputing; ``compile`` is ignored (NumPy has no compiler)."""
    return Decoder(model, use_cache, compile)
