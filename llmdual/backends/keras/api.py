"""Numpy-in, numpy-out entry points for the Keras backend; mirrors ``llmdual/backends/torch/api.py``."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from llmdual.backends.keras.model import GPT, Classifier, cross_entropy
from llmdual.backends.keras.weights import stored_transposed, variable
from llmdual.core.config import Config
from llmdual.core.validate import check_inputs, check_labels, index_array
from llmdual.core.weights import trainable_shapes

NAME = "keras"
MODELS = {"lm": GPT, "classifier": Classifier}


def build(config: Config, task: str) -> keras.Model:
    """An uninitialised, built model of the task (weights are set from the canonical initializer by the caller)."""
    model = MODELS[task](config)
    model.build()
    return model


def _tensor(array: np.ndarray | None):
    return None if array is None else ops.convert_to_tensor(index_array(array))


def forward(model: keras.Model, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    """Inference-mode logits as float32 numpy, compiled as Keras' ``predict`` compiles (see ``_compiled``)."""
    if keras.backend.backend() == "torch":
        import torch

        with torch.no_grad():  # eager, as predict runs on torch
            logits = model(_tensor(input_ids), _tensor(attention_mask), training=False)
        return np.asarray(ops.convert_to_numpy(logits), dtype=np.float32)
    ids, mask = index_array(input_ids), None if attention_mask is None else index_array(attention_mask)
    check_inputs(ids, model.config, mask)  # eagerly: a compiled graph cannot look at the values
    fn, bucketed = _compiled(model)
    T = ids.shape[1]
    if bucketed:  # pad the length to its bucket so ragged lengths reuse one trace
        ids, mask = _pad_to_bucket(model, ids, mask)
    logits = np.asarray(ops.convert_to_numpy(fn(ops.convert_to_tensor(ids), _tensor(mask))), dtype=np.float32)
    return logits[:, :T] if model.task == "lm" else logits


def _bucket(length: int, max_len: int) -> int:
    """The length's bucket: the next power of two (at least 16), at most ``max_len``."""
    return min(max(16, 1 << (length - 1).bit_length()), max_len)


def _pad_to_bucket(model: keras.Model, ids: np.ndarray,
                   mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Right-pad ids (with id 0) and mask (with 0) to the length's bucket. The LM's real positions never attend
    to later ones, so without a mask it needs none; the classifier then gets one covering the real tokens."""
    B, T = ids.shape
    pad = _bucket(T, model.config.max_seq_len) - T
    if mask is None and model.task != "lm":
        mask = np.ones((B, T), np.int64)
    if not pad:
        return ids, mask
    ids = np.pad(ids, ((0, 0), (0, pad)))
    return ids, None if mask is None else np.pad(mask, ((0, 0), (0, pad)))


def _compiled(model: keras.Model) -> tuple[Callable, bool]:
    """The model's inference forward compiled the way Keras' ``predict`` compiles it, and whether its inputs are
    padded to length buckets (a compiled shape is fixed). TensorFlow: ``tf.function`` with XLA when the model
    was compiled with ``jit_compile=True`` or a GPU is visible (Keras' "auto"), else a graph whose shapes
    relax (``reduce_retracing``); JAX: ``jax.jit`` over ``stateless_call``. Kept on the model per variable set,
    dtype policy and ``jit_compile`` setting, so adapters, a new policy or a new setting trace afresh."""
    backend = keras.backend.backend()
    trainable, other = model.trainable_variables, model.non_trainable_variables
    key = (backend, model.dtype_policy.name, model.jit_compile, tuple(map(id, trainable)), tuple(map(id, other)))
    cache = vars(model).get("_compiled_forward")
    if cache is None:
        cache = {}
        object.__setattr__(model, "_compiled_forward", cache)  # not tracked: Keras must not save or walk it
    if key not in cache:
        if backend == "tensorflow":
            import tensorflow as tf

            xla = bool(model.jit_compile)  # Keras' rule: the model's setting; "auto" is XLA unless CPU-only
            cache[key] = (tf.function(lambda ids, mask: model(ids, mask, training=False), jit_compile=xla,
                                      reduce_retracing=not xla), xla)
        elif backend == "jax":
            import jax

            jitted = jax.jit(lambda t, o, ids, mask: model.stateless_call(t, o, ids, mask, training=False)[0])
            cache[key] = (lambda ids, mask: jitted([v.value for v in trainable], [v.value for v in other], ids,
                                                   mask), True)
        else:
            raise ValueError(f"unsupported Keras backend {backend!r}; supported: tensorflow, jax, torch")
    return cache[key]


def loss_and_grads(
    model: keras.Model, input_ids: np.ndarray, targets: np.ndarray, attention_mask: np.ndarray | None = None
) -> tuple[float, dict[str, np.ndarray]]:
    """Cross-entropy loss (dropout off) and its gradient w.r.t. every trainable canonical weight (the adapters
    alone once the model has LoRA), canonical layout."""
    check_labels(targets, model.task, np.shape(input_ids), model.config)  # the ids are checked by the model
    names = list(trainable_shapes(model.config, model.task, model.lora))
    variables = [variable(model, n) for n in names]
    ids, mask, y = _tensor(input_ids), _tensor(attention_mask), _tensor(targets)

    def loss_fn():
        return cross_entropy(model(ids, mask, training=False), y)

    loss, grads = value_and_grad(loss_fn, variables)
    out = {}
    for name, g in zip(names, grads):
        g = np.asarray(ops.convert_to_numpy(g), dtype=np.float32)
        out[name] = np.ascontiguousarray(g.T if stored_transposed(name) else g)
    return float(ops.convert_to_numpy(loss)), out


def value_and_grad(loss_fn, variables):
    """``loss_fn()`` and its gradients w.r.t. ``variables`` on whichever backend Keras runs."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        return loss, tape.gradient(loss, [v.value for v in variables])
    if backend == "torch":
        for v in variables:
            v.value.grad = None
        loss = loss_fn()
        loss.backward()
        grads = [v.value.grad for v in variables]
        for v in variables:
            v.value.grad = None
        return loss.detach(), grads
    if backend == "jax":
        import jax
        from keras.src.backend.common.stateless_scope import get_stateless_scope

        outer = get_stateless_scope()  # fit's stateless step: it holds the values of the variables not differentiated

        def stateless(values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
                if outer is not None:  # frozen (LoRA) variables: fit keeps their values in its state alone
                    scope.state_mapping = {**outer.state_mapping, **scope.state_mapping}
                return loss_fn()

        return jax.value_and_grad(stateless)([v.value for v in variables])
    raise ValueError(f"unsupported Keras backend {backend!r}; supported: tensorflow, jax, torch")


def intermediates(model: keras.Model, input_ids: np.ndarray,
                  attention_mask: np.ndarray | None = None) -> list[np.ndarray]:
    """Activations in stage order: embeddings, each block's attention and MLP residual outputs, final norm."""
    trace: list = []
    model.hidden(_tensor(input_ids), _tensor(attention_mask), trace=trace, training=False)
    return [np.asarray(ops.convert_to_numpy(t), dtype=np.float32) for t in trace]

