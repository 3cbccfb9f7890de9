"""Numpy-in, numpy-out entry points for the PyTorch backend; mirrors ``llmdual/backends/keras/api.py``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from llmdual.backends.torch.model import GPT, Classifier, cross_entropy
from llmdual.backends.torch.weights import stored_transposed
from llmdual.core.config import Config
from llmdual.core.validate import check_labels, index_array
from llmdual.core.weights import trainable_shapes

NAME = "torch"
MODELS = {"lm": GPT, "classifier": Classifier}


def build(config: Config, task: str) -> nn.Module:
    """An uninitialised model of the task (weights are set from the canonical initializer by the caller)."""
    return MODELS[task](config)


def _tensor(model: nn.Module, array: np.ndarray | None) -> torch.Tensor | None:
    device = next(model.parameters()).device
    return None if array is None else torch.as_tensor(index_array(array), device=device)


def forward(model: nn.Module, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    """Inference-mode logits as float32 numpy."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(_tensor(model, input_ids), _tensor(model, attention_mask))
    finally:
        model.train(was_training)
    return logits.float().cpu().numpy()


def loss_and_grads(
    model: nn.Module, input_ids: np.ndarray, targets: np.ndarray, attention_mask: np.ndarray | None = None
) -> tuple[float, dict[str, np.ndarray]]:
    """Cross-entropy loss (dropout off) and its gradient w.r.t. every trainable canonical weight (the adapters
    alone once the model has LoRA), canonical layout."""
    check_labels(targets, model.task, np.shape(input_ids), model.config)  # the ids are checked by the model
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        loss = cross_entropy(model(_tensor(model, input_ids), _tensor(model, attention_mask)), _tensor(model, targets))
        loss.backward()
    finally:
        model.train(was_training)
    grads = {}
    for name in trainable_shapes(model.config, model.task, model.lora):
        g = model.get_parameter(name).grad
        g = np.zeros(model.get_parameter(name).shape, np.float32) if g is None else g.float().cpu().numpy()
        grads[name] = np.ascontiguousarray(g.T if stored_transposed(name) else g)
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def intermediates(model: nn.Module, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> list[np.ndarray]:
    """Activations in stage order: embeddings, each block's attention and MLP residual outputs, final norm."""
    trace: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.hidden(_tensor(model, input_ids), _tensor(model, attention_mask), trace=trace)
    finally:
        model.train(was_training)
    return [t.float().cpu().numpy() for t in trace]

