"""The one place where Keras variables convert to and from canonical weights (see ``llmdual.core.weights``)."""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np
from keras import ops

from llmdual.core.weights import canonical_shapes, check_weights

# Canonical leaf name -> Keras variable attribute, per layer type.
_LEAVES = {
    # ``_kernel``: with LoRA enabled, Dense's ``kernel`` property is the merged kernel, not the variable
    keras.layers.Dense: {"weight": "_kernel", "bias": "bias", "lora_A": "lora_kernel_a", "lora_B": "lora_kernel_b"},
    keras.layers.Embedding: {"weight": "embeddings"},
    keras.layers.LayerNormalization: {"weight": "gamma", "bias": "beta"},
    keras.layers.RMSNormalization: {"weight": "scale"},
}


def stored_transposed(name: str) -> bool:
    """Dense kernels are ``[in, out]`` like the canonical layout; only an untied ``lm_head`` is transposed."""
    return name == "lm_head.weight"


def variable(model: keras.Model, name: str) -> keras.Variable:
    """The Keras variable behind a canonical name, e.g. ``h.0.attn.c_attn.weight`` -> ``model.h[0].attn.c_attn.kernel``."""
    *path, leaf = name.split(".")
    layer = model
    for part in path:
        layer = layer[int(part)] if part.isdigit() else getattr(layer, part)
    return getattr(layer, _LEAVES[type(layer)][leaf])


def get_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """Canonical name -> float32 numpy copy of every variable (a copy: a backend's numpy view of a variable may
    share the buffer it updates in place)."""
    weights = {}
    for name in canonical_shapes(model.config, model.task, model.lora):
        value = np.asarray(ops.convert_to_numpy(variable(model, name)), dtype=np.float32)
        weights[name] = np.array(value.T if stored_transposed(name) else value, order="C")
    return weights


def set_weights(model: keras.Model, weights: Mapping[str, np.ndarray]) -> None:
    """Assign canonical weights to the model, validating names and shapes first."""
    weights = check_weights(weights, model.config, model.task, model.lora)
    for name, value in weights.items():
        var = variable(model, name)
        var.assign(np.ascontiguousarray(value.T if stored_transposed(name) else value).astype(var.dtype))
