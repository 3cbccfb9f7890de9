"""Decoding steps for a PyTorch GPT behind ``llmdual.decoding.Decoder``. Mirrors ``llmdual/keras_backend/decode.py``.

Numpy in, numpy out: ids and the attention mask (past + new tokens) go in, the last position's float32 logits
come out with an opaque state (the KV cache, or the ids so far when recomputing). Left padding is handled by
the mask and ``position_ids = cumsum(mask) - 1``; an unpadded batch takes the kernels' fast causal path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from llmdual.decoding import StepDecoder, padded_positions
from llmdual.torch_backend.model import KVCache
from llmdual.validate import index_array


class Decoder(StepDecoder):
    """Prefill and step a causal LM with its KV cache (``use_cache``) or by recomputing the whole prefix."""

    def __init__(self, model: nn.Module, use_cache: bool = True):
        if model.task != "lm":
            raise ValueError(f"generation needs a task 'lm' model, got task {model.task!r}")
        self.model, self.use_cache = model, use_cache
        self.max_seq_len = model.config.max_seq_len
        self.device = next(model.parameters()).device

    def _run(self, ids: np.ndarray, mask: np.ndarray, past: KVCache | None) -> tuple[np.ndarray, object]:
        """One ``forward_cached`` call: mask and positions only when some row is padded."""
        positions = padded_positions(mask, ids.shape[1])
        padded = positions is not None
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                logits, present = self.model.forward_cached(
                    self._tensor(ids), past, self._tensor(mask) if padded else None, self._tensor(positions)
                )
                last = logits[:, -1].float().cpu().numpy()
        finally:
            self.model.train(was_training)
        return last, (present if self.use_cache else ids)

    def _tensor(self, array: np.ndarray | None) -> torch.Tensor | None:
        return None if array is None else torch.from_numpy(np.ascontiguousarray(index_array(array))).to(self.device)


def decoder(model: nn.Module, use_cache: bool = True) -> Decoder:
    """The contract's decoder: prefill and step ``model`` with its KV cache (``use_cache``) or by recomputing."""
    return Decoder(model, use_cache)
