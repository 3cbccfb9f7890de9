"""ONNX graphs of the Keras models with tf2onnx (a ``tf.function`` of the model, converted). Mirrors
``llmdual/backends/torch/export.py``; ``llmdual.onnx.export`` names, checks and verifies the result."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import keras
import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
from keras import ops

from llmdual.backends.keras.api import forward

if TYPE_CHECKING:
    from llmdual.core.signature import Signature

OPSETS = range(11, 19)  # tf2onnx 1.17 converts this model's ops from opset 11 (StridedSlice) up to 18, its newest


def outputs(model: keras.Model, kv_cache: bool, inputs: list) -> list:
    """The graph's computation: flat tensors in the signature's input order in, flat outputs out."""
    if kv_cache:
        input_ids, attention_mask, position_ids, *past = inputs
        pairs = list(zip(past[0::2], past[1::2]))
        logits, present = model.forward_cached(input_ids, pairs, attention_mask, position_ids)
        return [logits, *(t for kv in present for t in kv)]
    return [model(*inputs, training=False)]


def graph(
    model: keras.Model, sig: Signature, example: dict[str, np.ndarray], opset: int, dynamic: bool
) -> onnx.ModelProto:
    """The ONNX graph of ``model`` with ``sig``'s inputs and outputs, traced on ``example``."""
    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"ONNX export of a Keras model needs Keras' TensorFlow backend (tf2onnx converts "
                         f"TensorFlow graphs); this process runs Keras on {keras.backend.backend()!r}: set "
                         f"KERAS_BACKEND=tensorflow")
    specs = [
        tf.TensorSpec([None if dynamic and isinstance(a, str) else n for a, n in zip(axes, example[name].shape)],
                      sig.dtype(name), name=name)
        for name, axes in sig.inputs.items()
    ]
    graph = tf.function(lambda *inputs: dict(zip(sig.outputs, outputs(model, sig.kv_cache, list(inputs)))),
                        input_signature=specs)
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # tf2onnx logs every conversion step at INFO and WARNING
    try:
        proto, _ = tf2onnx.convert.from_function(graph, input_signature=specs, opset=opset)
    finally:
        logger.setLevel(level)
    return proto


def run(model: keras.Model, sig: Signature, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The native model's outputs for ``feeds``, in the signature's output order: the verification reference."""
    with warnings.catch_warnings():
        # Keras flags a softmax over one key (a single-token pass): correct here, where it is 1 by design.
        warnings.filterwarnings("ignore", message="You are using a softmax over axis")
        if not sig.kv_cache:
            return [forward(model, feeds["input_ids"], feeds.get("attention_mask"))]
        tensors = [ops.convert_to_tensor(feeds[n]) for n in sig.inputs]
        return [np.asarray(ops.convert_to_numpy(t)) for t in outputs(model, True, tensors)]
