"""Decoding steps for a Keras GPT behind ``llmdual.decoding.Decoder``. Mirrors ``llmdual/torch_backend/decode.py``.

Numpy in, numpy out, over a static KV cache (``llmdual.decoding.StaticDecoder``): per-layer buffers allocated
once and updated by ``ops.slice_update`` in ``forward_static``. Compiled per Keras backend: on TensorFlow one
``tf.function`` graph (XLA with ``compile``), on JAX ``jax.jit`` over the model's variables passed as state;
both compile once per input shape, so the step once per (batch, cache length). On torch the layers run eagerly.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from llmdual.decoding import StaticDecoder
from llmdual.validate import index_array


class Decoder(StaticDecoder):
    """Prefill and step a causal LM over its static KV cache (``use_cache``) or by recomputing the whole prefix;
    ``compile``: XLA on TensorFlow (JAX always compiles, torch runs eagerly)."""

    def __init__(self, model: keras.Model, use_cache: bool = True, compile: bool = False):
        if model.task != "lm":
            raise ValueError(f"generation needs a task 'lm' model, got task {model.task!r}")
        self.model, self.use_cache, self.config = model, use_cache, model.config
        self.max_seq_len = model.config.max_seq_len
        self._step = compiled(model, compile)

    def _allocate(self, batch: int, length: int) -> list:
        c = self.config
        shape = (batch, c.n_heads, length, c.d_model // c.n_heads)
        return [(ops.zeros(shape, self.model.compute_dtype), ops.zeros(shape, self.model.compute_dtype))
                for _ in range(c.n_layers)]

    def _grow(self, cache: list, length: int) -> list:
        extra = length - self._length(cache)
        return [tuple(ops.pad(buffer, ((0, 0), (0, 0), (0, extra), (0, 0))) for buffer in layer) for layer in cache]

    def _length(self, cache: list) -> int:
        return int(cache[0][0].shape[2])

    def _forward(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, cache: list,
                 start: int) -> tuple[np.ndarray, list]:
        """One ``forward_static`` call (compiled on TensorFlow and JAX) for the prefill and every step."""
        logits, cache = self._step(index_array(ids), cache, np.int32(start), index_array(mask),
                                   index_array(positions))
        return np.asarray(ops.convert_to_numpy(logits), dtype=np.float32), cache


def compiled(model: keras.Model, compile: bool) -> Callable:
    """The model's ``forward_static`` compiled for this Keras backend, made once per model (and ``compile``) and
    kept on it so every generation reuses its traces: a ``tf.function`` (``jit_compile=compile``) on TensorFlow,
    ``jax.jit`` over ``keras.StatelessScope`` on JAX, the eager method under ``torch.no_grad`` on torch. It takes
    numpy ids, start, mask and positions, and the cache as the previous call returned it."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        def eager(ids, cache, start, mask, positions):
            with torch.no_grad():  # a Python int start: slice_update's fast path (slicing, no index grid)
                return model.forward_static(ops.convert_to_tensor(ids), cache, int(start),
                                            ops.convert_to_tensor(mask), ops.convert_to_tensor(positions))

        return eager
    name = f"_static_step_{backend}_{'xla' if compile or backend == 'jax' else 'graph'}"
    step = getattr(model, name, None)
    if step is None:
        step = _tf_function(model, compile) if backend == "tensorflow" else _jax_jit(model)
        object.__setattr__(model, name, step)  # not a tracked attribute: Keras must not save or walk it
    return step


def _tf_function(model: keras.Model, jit_compile: bool) -> Callable:
    """``forward_static`` as one TensorFlow graph; without XLA its shapes relax after a second trace. Each step
    calls the graph's concrete function for its shapes directly: the ``tf.function``'s own dispatch (matching
    the nested cache's types every call) costs about a sixth of a small decoding step."""
    import tensorflow as tf

    graph = tf.function(model.forward_static, jit_compile=jit_compile, reduce_retracing=not jit_compile)
    concrete: dict = {}

    def step(ids, cache, start, mask, positions):
        args = (tf.constant(ids), cache, tf.constant(start), tf.constant(mask), tf.constant(positions))
        key = (ids.shape, mask.shape)
        if key not in concrete:
            concrete[key] = graph.get_concrete_function(*args)
        return concrete[key](*args)

    step.experimental_get_tracing_count = graph.experimental_get_tracing_count  # traces are counted as on the graph
    return step


def _jax_jit(model: keras.Model) -> Callable:
    """``forward_static`` as a pure JAX function of the model's variables, jitted (the cache is not donated: a
    state stays valid after the step that read it, as the ``Decoder`` protocol lets callers reuse one). The
    numpy inputs go to the jitted function as they are (its C++ dispatch moves them; ``convert_to_tensor`` per
    array costs more than a small step), and the variables' values are read once per generation, at its prefill
    (``start`` 0), not at every step."""
    import jax

    variables = model.trainable_variables + model.non_trainable_variables
    values: list = []

    def pure(values, ids, cache, start, mask, positions):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return model.forward_static(ids, cache, start, mask, positions)

    jitted = jax.jit(pure)

    def step(ids, cache, start, mask, positions):
        if start == 0 or not values:
            values[:] = [v.value for v in variables]
        return jitted(values, ids.astype(np.int32), cache, start, mask.astype(np.int32), positions.astype(np.int32))

    return step


def decoder(model: keras.Model, use_cache: bool = True, compile: bool = False) -> Decoder:
    """The contract's decoder: prefill and step ``model`` over its static KV cache (``use_cache``) or by
    recomputing; ``compile``: XLA on TensorFlow."""
    return Decoder(model, use_cache, compile)
