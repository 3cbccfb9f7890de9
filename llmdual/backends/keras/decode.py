"""Decoding steps for a Keras GPT behind ``llmdual.core.decoding.Decoder``. Mirrors ``llmdual/backends/torch/decode.py``.

Numpy in, numpy out, over a static KV cache (``llmdual.core.decoding.StaticDecoder``): per-layer buffers allocated
once and updated by ``ops.slice_update`` in ``forward_static``. Compiled per Keras backend: on TensorFlow one
``tf.function`` graph (XLA with ``compile``), on JAX ``jax.jit`` over the model's variables passed as state;
both compile once per input shape, so the step once per (batch, cache length). On torch the layers run eagerly.
A greedy generation runs whole in one ``ops.while_loop``, compiled the same way (a ``lax.while_loop`` on JAX, as
keras-hub generates), with no numpy round trip per token.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from llmdual.core.decoding import StaticDecoder
from llmdual.core.validate import index_array


class Decoder(StaticDecoder):
    """Prefill and step a causal LM over its static KV cache (``use_cache``) or by recomputing the whole prefix;
    ``compile``: XLA on TensorFlow (JAX always compiles, torch runs eagerly)."""

    def __init__(self, model: keras.Model, use_cache: bool = True, compile: bool = False):
        if model.task != "lm":
            raise ValueError(f"generation needs a task 'lm' model, got task {model.task!r}")
        self.model, self.use_cache, self.config = model, use_cache, model.config
        self.max_seq_len = model.config.max_seq_len
        self._step = compiled(model, compile)
        self._loop = _looped(model, compile)

    def _allocate(self, batch: int, length: int) -> list:
        c = self.config
        shape = (batch, c.kv_heads, length, c.head_dim)
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

    def _greedy(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, cache: list, count: int,
                eot: int) -> np.ndarray:
        """The prefill and every step as one ``_greedy_loop`` call (compiled as the step is)."""
        tokens = self._loop(index_array(ids), cache, index_array(mask), index_array(positions), np.int32(count),
                            np.int32(eot))
        return np.asarray(ops.convert_to_numpy(tokens), dtype=np.int64)


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
    return _kept(model, "_decode_step", model.forward_static, compile, lambda start: start == 0)


def _looped(model: keras.Model, compile: bool) -> Callable:
    """``_greedy_loop`` over ``model`` compiled like ``compiled``'s step (eager under ``torch.no_grad`` on torch):
    numpy ids, cache, mask, positions, count and end-of-text id in, the tokens tensor out."""
    if keras.backend.backend() == "torch":
        import torch

        def eager(ids, cache, mask, positions, count, eot):
            with torch.no_grad():
                return loop(ops.convert_to_tensor(ids), cache, ops.convert_to_tensor(mask),
                            ops.convert_to_tensor(positions), int(count), int(eot))

        loop = _greedy_loop(model, _python_while)
        return eager
    return _kept(model, "_decode_loop", _greedy_loop(model, ops.while_loop), compile, lambda mask: True)


def _kept(model: keras.Model, name: str, function: Callable, compile: bool, fresh: Callable) -> Callable:
    """``function`` compiled for this backend (a ``tf.function``, XLA with ``compile``; ``jax.jit``), made once per
    model and kept on it so every generation reuses its traces; ``fresh(third argument)``: whether a call starts a
    generation (JAX then reads the variables' values anew)."""
    backend = keras.backend.backend()
    name = f"{name}_{backend}_{'xla' if compile or backend == 'jax' else 'graph'}"
    kept = getattr(model, name, None)
    if kept is None:
        kept = _tf_function(function, compile) if backend == "tensorflow" else _jax_jit(model, function, fresh)
        object.__setattr__(model, name, kept)  # not a tracked attribute: Keras must not save or walk it
    return kept


def _greedy_loop(model: keras.Model, while_loop: Callable) -> Callable:
    """``loop(ids, cache, mask, positions, count, eot)``: prefill ``ids`` (B, T) into the static ``cache``, then feed
    each row's argmax back at slot T - 1 + t and position last + t in one ``while_loop``, until ``count`` tokens or
    every row has made ``eot``; int32 tokens (B, L), zero after the stop. Argmax takes the lowest id on ties, as
    the numpy sampler does."""

    def loop(ids, cache, mask, positions, count, eot):
        T, L = ops.shape(ids)[1], ops.shape(mask)[1]
        logits, cache = model.forward_static(ids, cache, 0, mask, positions)
        token = ops.cast(ops.argmax(logits, axis=-1), "int32")
        tokens = ops.slice_update(ops.zeros((ops.shape(ids)[0], L), "int32"), (0, 0), token[:, None])
        last = ops.cast(positions[:, -1:], "int32")

        def going(t, token, tokens, cache, done):
            return ops.logical_and(ops.less(t, count), ops.logical_not(ops.all(done)))

        def step(t, token, tokens, cache, done):
            logits, cache = model.forward_static(token[:, None], cache, T - 1 + t, mask, last + t)
            token = ops.cast(ops.argmax(logits, axis=-1), "int32")
            return t + 1, token, ops.slice_update(tokens, (0, t), token[:, None]), cache, done | (token == eot)

        return while_loop(going, step, (1, token, tokens, cache, token == eot))[2]

    return loop


def _python_while(going: Callable, step: Callable, state: tuple) -> tuple:
    """``ops.while_loop`` as a plain loop whose counter stays a Python int, for eager torch: ``slice_update`` at
    an int slot slices, where a tensor slot builds an index grid (and halves the speed of a small step)."""
    while bool(going(*state)):
        state = step(*state)
    return state


def _tf_function(function: Callable, jit_compile: bool) -> Callable:
    """``function`` as one TensorFlow graph; without XLA its shapes relax after a second trace. Each call goes to
    the graph's concrete function for its shapes directly: the ``tf.function``'s own dispatch (matching the
    nested cache's types every call) costs about a sixth of a small decoding step."""
    import tensorflow as tf

    graph = tf.function(function, jit_compile=jit_compile, reduce_retracing=not jit_compile)
    concrete: dict = {}

    def step(ids, cache, *rest):
        args = (tf.constant(ids), cache, *(tf.constant(a) for a in rest))
        key = tuple(np.shape(a) for a in (ids, *rest))
        if key not in concrete:
            concrete[key] = graph.get_concrete_function(*args)
        return concrete[key](*args)

    step.experimental_get_tracing_count = graph.experimental_get_tracing_count  # traces are counted as on the graph
    return step


def _jax_jit(model: keras.Model, function: Callable, fresh: Callable) -> Callable:
    """``function`` as a pure JAX function of the model's variables, jitted (the cache is not donated: a state
    stays valid after the step that read it, as the ``Decoder`` protocol lets callers reuse one). The numpy
    inputs go to the jitted function as they are, as int32 (its C++ dispatch moves them; ``convert_to_tensor``
    per array costs more than a small step), and the variables' values are read once per generation, when
    ``fresh`` says a call starts one, not at every step."""
    import jax

    variables = model.trainable_variables + model.non_trainable_variables
    values: list = []

    def pure(values, ids, cache, *rest):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return function(ids, cache, *rest)

    jitted = jax.jit(pure)

    def step(ids, cache, *rest):
        if not values or fresh(rest[0]):
            values[:] = [v.value for v in variables]
        return jitted(values, ids.astype(np.int32), cache,
                      *(a.astype(np.int32) if isinstance(a, np.ndarray) else a for a in rest))

    return step


def decoder(model: keras.Model, use_cache: bool = True, compile: bool = False) -> Decoder:
    """The contract's decoder: prefill and step ``model`` over its static KV cache (``use_cache``) or by
    recomputing; ``compile``: XLA on TensorFlow."""
    return Decoder(model, use_cache, compile)
