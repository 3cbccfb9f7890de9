"""The one place where the NumPy model's arrays convert to and from canonical weights (see ``llmdual.core.weights``).

The model keeps every weight in float64 (the reference computes in float64); canonical weights are float32, and
float32 -> float64 -> float32 is exact, so weights set and read back are bit-identical.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from llmdual.backends.numpy.model import Transformer
from llmdual.core.weights import canonical_shapes, check_weights


def stored_transposed(name: str) -> bool:
    """Projections are ``[in, out]`` like the canonical layout; only an untied ``lm_head`` is transposed."""
    return name == "lm_head.weight"


def array(model: Transformer, name: str) -> np.ndarray:
    """The float64 array behind a canonical name (``h.0.attn.c_attn.weight``: ``model.h[0].attn.c_attn.weight``)."""
    *path, leaf = name.split(".")
    module = model
    for part in path:
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return getattr(module, leaf)


def get_weights(model: Transformer) -> dict[str, np.ndarray]:
    """Canonical name -> float32 numpy copy of every weight."""
    weights = {}
    for name in canonical_shapes(model.config, model.task, model.lora):
        value = array(model, name)
        weights[name] = np.array(value.T if stored_transposed(name) else value, dtype=np.float32, order="C")
    return weights


def set_weights(model: Transformer, weights: Mapping[str, np.ndarray]) -> None:
    """Copy canonical weights into the model's float64 arrays, validating names and shapes first."""
    weights = check_weights(weights, model.config, model.task, model.lora)
    for name, value in weights.items():
        array(model, name)[...] = value.T if stored_transposed(name) else value
