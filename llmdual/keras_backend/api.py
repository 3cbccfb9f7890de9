"""Numpy-in, numpy-out entry points for the Keras backend; mirrors ``llmdual/torch_backend/api.py``."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from llmdual.config import Config
from llmdual.keras_backend.model import GPT, Classifier, cross_entropy
from llmdual.keras_backend.weights import stored_transposed, variable
from llmdual.validate import check_labels, index_array
from llmdual.weights import trainable_shapes

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
    """Inference-mode logits as float32 numpy."""
    logits = model(_tensor(input_ids), _tensor(attention_mask), training=False)
    return np.asarray(ops.convert_to_numpy(logits), dtype=np.float32)


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


def intermediates(model: keras.Model, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> list[np.ndarray]:
    """Activations in stage order: embeddings, each block's attention and MLP residual outputs, final norm."""
    trace: list = []
    model.hidden(_tensor(input_ids), _tensor(attention_mask), trace=trace, training=False)
    return [np.asarray(ops.convert_to_numpy(t), dtype=np.float32) for t in trace]

