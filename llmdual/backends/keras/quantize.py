"""Int8 in Keras: Keras' own ``model.quantize("int8")`` on the model's ``Dense`` projections. Mirrors
``llmdual/backends/torch/quantize.py``.

Keras' int8 ``Dense``: int8 weights, symmetric (abs-max), one scale per output channel, and each input quantized
on the fly, symmetric, one scale per token (``AbsMaxQuantizer(axis=-1)``), then an int8 matmul. ``Embedding`` is
left out (Keras would quantize it too): the embeddings, and so the tied LM head, stay float32 as in PyTorch; so do
layer norms and biases.
"""

from __future__ import annotations

import keras
import numpy as np

from llmdual.backends.keras.lora import _forget_traces


def quantize(model: keras.Model, scheme: str) -> None:
    """Quantize every ``Dense`` of ``model`` in place with Keras (``scheme`` is checked by the caller)."""
    model.quantize(scheme, filters=lambda layer: isinstance(layer, keras.layers.Dense))
    _forget_traces(model)  # a compiled decoding step traced the float kernels
    model.quantized = scheme


def weight_bytes(model: keras.Model) -> int:
    """Bytes the model's weights take in memory: int8 kernels and their scales, the rest as stored."""
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)
