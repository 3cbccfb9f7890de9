"""Decoding steps for a PyTorch GPT behind ``llmdual.core.decoding.Decoder``. Mirrors ``llmdual/backends/keras/decode.py``.

Numpy in, numpy out, over a static KV cache (``llmdual.core.decoding.StaticDecoder``): per-layer buffers allocated
once and written in place by ``index_copy_`` in ``forward_static``. With ``compile`` the one-token step runs under
``torch.compile``, compiled once per (batch, cache length); CUDA graphs (``mode="reduce-overhead"``) on a GPU.
The prefill, once per generation and of any prompt length, runs eagerly. A greedy generation loops over the
steps on tensors, each argmax fed straight back, with no numpy round trip per token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from llmdual.backends.torch.model import KVCache
from llmdual.core.decoding import StaticDecoder
from llmdual.core.validate import index_array


class Decoder(StaticDecoder):
    """Prefill and step a causal LM over its static KV cache (``use_cache``) or by recomputing the whole prefix;
    ``compile``: the step under ``torch.compile``."""

    def __init__(self, model: nn.Module, use_cache: bool = True, compile: bool = False):
        if model.task != "lm":
            raise ValueError(f"generation needs a task 'lm' model, got task {model.task!r}")
        self.model, self.use_cache, self.config = model, use_cache, model.config
        self.max_seq_len = model.config.max_seq_len
        self.device = next(model.parameters()).device
        self._step = compiled(model, compile)

    def _allocate(self, batch: int, length: int) -> KVCache:
        c = self.config
        shape = (batch, c.kv_heads, length, c.head_dim)
        dtype = next(self.model.parameters()).dtype
        return [tuple(torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(2)) for _ in range(c.n_layers)]

    def _grow(self, cache: KVCache, length: int) -> KVCache:
        extra = length - self._length(cache)
        return [tuple(nn.functional.pad(buffer, (0, 0, 0, extra)) for buffer in layer) for layer in cache]

    def _length(self, cache: KVCache) -> int:
        return cache[0][0].shape[2]

    def _forward(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, cache: KVCache,
                 start: int) -> tuple[np.ndarray, KVCache]:
        """One ``forward_static`` call in inference mode: the compiled step for one token, eager otherwise."""
        forward = self._step if ids.shape[1] == 1 else self.model.forward_static
        with self._inference():
            logits, cache = forward(self._tensor(ids), cache, self._tensor(np.asarray(start)), self._tensor(mask),
                                    self._tensor(positions))
            return logits.float().cpu().numpy(), cache

    def _greedy(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, cache: KVCache, count: int,
                eot: int) -> np.ndarray:
        """The prefill, then up to ``count - 1`` steps (compiled with ``compile``) fed their own argmax (lowest id
        on ties, as the numpy sampler), in inference mode; stops early once every row has made ``eot``."""
        with self._inference():
            mask_t, T = self._tensor(mask), ids.shape[1]
            logits, cache = self.model.forward_static(self._tensor(ids), cache, self._tensor(np.asarray(0)), mask_t,
                                                      self._tensor(positions))
            token = logits.argmax(-1, keepdim=True)
            tokens, done, last = [token], token == eot, self._tensor(positions[:, -1:])
            for t in range(1, count):
                if eot >= 0 and bool(done.all()):
                    break
                logits, cache = self._step(token, cache, self._tensor(np.asarray(T - 1 + t)), mask_t, last + t)
                token = logits.argmax(-1, keepdim=True)
                tokens.append(token)
                done |= token == eot
            out = torch.cat(tokens, dim=1).cpu().numpy()
        return np.pad(out, ((0, 0), (0, count - out.shape[1])))

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """Inference mode, the model in eval mode meanwhile. Train mode changes only dropout: switched off only
        when there is some (walking the modules costs 30% of a small step)."""
        training = self.model.training and self.config.dropout > 0
        if training:
            self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            if training:
                self.model.train()

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        """A fresh C-ordered copy on the device: a slice's strides (even over a size-1 axis, as one token of a
        [B, new] array has) would differ call by call, and the compiled step guards on strides."""
        return torch.from_numpy(np.array(index_array(array), order="C")).to(self.device)


def compiled(model: nn.Module, compile: bool) -> Callable:
    """The model's ``forward_static``, under ``torch.compile`` with ``compile`` (made once per model and kept on
    it, so every generation reuses its graphs; static shapes: one graph per batch and cache length). A quantized
    model's step stays eager: torch.compile of torchao's int8 linear at a (1, 1, in) input, batch 1's one-token
    step, gives wrong values on the CPU with torch 2.13 (off by ~3e4 where eager is right; other shapes match)."""
    if not compile or getattr(model, "quantized", None):
        return model.forward_static
    step = getattr(model, "_static_step", None)
    if step is None:
        mode = "reduce-overhead" if next(model.parameters()).is_cuda else None
        step = torch.compile(model.forward_static, mode=mode, dynamic=False)
        object.__setattr__(model, "_static_step", step)
    return step


def decoder(model: nn.Module, use_cache: bool = True, compile: bool = False) -> Decoder:
    """The contract's decoder: prefill and step ``model`` over its static KV cache (``use_cache``) or by
    recomputing; ``compile``: compile the step (``torch.compile``)."""
    return Decoder(model, use_cache, compile)
