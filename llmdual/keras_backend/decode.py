"""Decoding steps for a Keras GPT behind ``llmdual.decoding.Decoder``. Mirrors ``llmdual/torch_backend/decode.py``.

Numpy in, numpy out: ids and the attention mask (past + new tokens) go in, the last position's float32 logits
come out with an opaque state (the KV cache, or the ids so far when recomputing). Left padding is handled by
the mask and ``position_ids = cumsum(mask) - 1``; an unpadded batch skips both. On TensorFlow the step runs
as one ``tf.function`` graph (traced for a few shape patterns, then reused): called eagerly, Keras' per-layer
overhead would cost more than the step's arithmetic. Other Keras backends call the layers directly.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from llmdual.decoding import StepDecoder, padded_positions
from llmdual.validate import index_array


class Decoder(StepDecoder):
    """Prefill and step a causal LM with its KV cache (``use_cache``) or by recomputing the whole prefix."""

    def __init__(self, model: keras.Model, use_cache: bool = True):
        if model.task != "lm":
            raise ValueError(f"generation needs a task 'lm' model, got task {model.task!r}")
        self.model, self.use_cache = model, use_cache
        self.max_seq_len = model.config.max_seq_len
        self._forward = compiled(model)

    def _run(self, ids: np.ndarray, mask: np.ndarray, past: list | None) -> tuple[np.ndarray, object]:
        """One ``forward_cached`` call: mask and positions only when some row is padded."""
        positions = padded_positions(mask, ids.shape[1])
        padded = positions is not None
        logits, present = self._forward(
            self._tensor(ids), past, self._tensor(mask) if padded else None, self._tensor(positions)
        )
        last = np.asarray(ops.convert_to_numpy(logits[:, -1]), dtype=np.float32)
        return last, (present if self.use_cache else ids)

    def _tensor(self, array: np.ndarray | None):
        return None if array is None else ops.convert_to_tensor(index_array(array))


def compiled(model: keras.Model):
    """The model's ``forward_cached`` as a TensorFlow graph function on the TensorFlow backend, made once per
    model and kept on it so every ``generate`` call reuses its traces (shapes relaxed after a second trace, so
    growing caches share one graph); the plain method on other backends. A graph cannot look at its inputs'
    values, so the graph's caller runs the model's eager ``check_inputs`` on them first."""
    if keras.backend.backend() != "tensorflow":
        return model.forward_cached
    graph = getattr(model, "_decode_graph", None)
    if graph is None:
        import tensorflow as tf

        graph = model._decode_graph = tf.function(model.forward_cached, reduce_retracing=True)

    def checked(input_ids, past_key_values=None, attention_mask=None, position_ids=None):
        model.check_inputs(input_ids, attention_mask, past_key_values, position_ids)
        return graph(input_ids, past_key_values, attention_mask, position_ids)

    return checked


def decoder(model: keras.Model, use_cache: bool = True) -> Decoder:
    """The contract's decoder: prefill and step ``model`` with its KV cache (``use_cache``) or by recomputing."""
    return Decoder(model, use_cache)
