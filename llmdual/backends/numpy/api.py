"""Numpy-in, numpy-out entry points for the float64 NumPy reference; mirrors ``llmdual/backends/torch/api.py``."""

from __future__ import annotations

import numpy as np

from llmdual.backends.numpy.model import GPT, Classifier, Transformer
from llmdual.backends.numpy.weights import array
from llmdual.core.config import Config
from llmdual.core.validate import index_array
from llmdual.core.weights import canonical_shapes

NAME = "numpy"
MODELS = {"lm": GPT, "classifier": Classifier}


def build(config: Config, task: str) -> Transformer:
    """A model of the task with zeroed float64 weights (they are set from the canonical initializer by the caller)."""
    return MODELS[task](config)


def _array(array: np.ndarray | None) -> np.ndarray | None:
    return None if array is None else index_array(array)


def forward(model: Transformer, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    """Logits as float64 numpy: the reference, computed in float64 throughout (the other backends return
    float32)."""
    return model(_array(input_ids), _array(attention_mask))


def intermediates(model: Transformer, input_ids: np.ndarray,
                  attention_mask: np.ndarray | None = None) -> list[np.ndarray]:
    """Float64 activations in stage order: embeddings, each block's attention and MLP residual outputs, final norm."""
    trace: list[np.ndarray] = []
    model.hidden(_array(input_ids), _array(attention_mask), trace=trace)
    return trace


def weight_bytes(model: Transformer) -> int:
    """Bytes the model's weights take in memory: every weight in float64."""
    return sum(array(model, name).nbytes for name in canonical_shapes(model.config, model.task))
