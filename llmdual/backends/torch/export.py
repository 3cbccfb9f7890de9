"""ONNX graphs of the PyTorch models with torch.onnx's dynamo exporter (torch.export, then onnxscript).
Mirrors ``llmdual/backends/keras/export.py``; ``llmdual.onnx.export`` names, checks and verifies the result."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from torch import nn

from llmdual.backends.torch.api import forward

if TYPE_CHECKING:
    from llmdual.core.signature import Signature

OPSETS = range(18, 25)  # the dynamo exporter translates to opset 18 and newer (asked for less, it keeps 18)


def outputs(model: nn.Module, kv_cache: bool, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The graph's computation: flat tensors in the signature's input order in, flat outputs out."""
    if kv_cache:
        input_ids, attention_mask, position_ids, *past = inputs
        pairs = list(zip(past[0::2], past[1::2]))
        logits, present = model.forward_cached(input_ids, pairs, attention_mask, position_ids)
        return [logits, *(t for kv in present for t in kv)]
    if model.task == "lm":
        # An all-ones mask keeps the causal mask a tensor: without one the model picks the fused kernel's
        # is_causal flag from the sequence length, a Python bool that a dynamic axis cannot provide.
        return [model(inputs[0], torch.ones_like(inputs[0]))]
    return [model(*inputs)]


class Graph(nn.Module):
    """``outputs`` as a module, the form ``torch.onnx.export`` traces."""

    def __init__(self, model: nn.Module, kv_cache: bool):
        super().__init__()
        self.model, self.kv_cache = model, kv_cache

    def forward(self, *inputs):
        return tuple(outputs(self.model, self.kv_cache, list(inputs)))


def graph(
    model: nn.Module, sig: Signature, example: dict[str, np.ndarray], opset: int, dynamic: bool
) -> onnx.ModelProto:
    """The ONNX graph of ``model`` with ``sig``'s inputs and outputs, traced on ``example``."""
    args = tuple(torch.from_numpy(example[name]) for name in sig.inputs)
    dim = torch.export.Dim.DYNAMIC  # the exporter finds how axes relate (total = past + new); onnx_export names them
    dynamic_shapes = None
    if dynamic:
        per_input = ({i: dim for i, axis in enumerate(axes) if isinstance(axis, str)} for axes in sig.inputs.values())
        dynamic_shapes = (tuple(per_input),)
    logger = logging.getLogger("torch.onnx")
    level, was_training = logger.level, model.training
    logger.setLevel(logging.ERROR)  # the exporter warns about optional packages (torchvision) on every call
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation chatter from torch.export internals, not about this model
            program = torch.onnx.export(
                Graph(model, sig.kv_cache), args, dynamo=True, opset_version=opset, input_names=list(sig.inputs),
                output_names=list(sig.outputs), dynamic_shapes=dynamic_shapes, verbose=False,
            )
    finally:
        logger.setLevel(level)
        model.train(was_training)
    return program.model_proto


def run(model: nn.Module, sig: Signature, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The native model's outputs for ``feeds``, in the signature's output order: the verification reference."""
    if not sig.kv_cache:
        return [forward(model, feeds["input_ids"], feeds.get("attention_mask"))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            tensors = [torch.from_numpy(feeds[n]) for n in sig.inputs]
            return [t.numpy() for t in outputs(model, True, tensors)]
    finally:
        model.train(was_training)
