"""The public, backend-neutral API: build a model, move canonical weights in and out, run it on numpy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from llmdual.backend import backend_of, load_backend
from llmdual.config import Config
from llmdual.weights import check_task, init_weights


def build(
    config: Config,
    backend: str = "torch",
    task: str = "lm",
    seed: int = 0,
    weights: Mapping[str, np.ndarray] | None = None,
) -> Any:
    """The native model (``torch.nn.Module`` or ``keras.Model``) holding ``weights``, by default the shared
    numpy initializer's for ``seed``."""
    if not isinstance(config, Config):
        raise TypeError(f"config must be an llmdual.Config, got {type(config).__name__}")
    check_task(task)
    module = load_backend(backend)
    model = module.build(config, task)
    set_weights(model, init_weights(config, task, seed) if weights is None else weights)
    return model


def get_weights(model: Any) -> dict[str, np.ndarray]:
    """Every weight as float32 numpy, by canonical name and layout."""
    return load_backend(backend_of(model))._weights.get_weights(model)


def set_weights(model: Any, weights: Mapping[str, np.ndarray]) -> None:
    """Load canonical weights; ``ValueError`` listing missing, unexpected or mis-shaped entries."""
    load_backend(backend_of(model))._weights.set_weights(model, weights)


def forward(model: Any, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    """Numpy ids (B, T) in, numpy float32 logits out (LM: (B, T, vocab); classifier: (B, num_classes))."""
    return load_backend(backend_of(model)).forward(model, input_ids, attention_mask)
