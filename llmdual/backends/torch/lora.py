"""LoRA in PyTorch: ``LoraLinear`` in place of each target ``nn.Linear``. Mirrors ``llmdual/backends/keras/lora.py``.

The adapter values are set by ``llmdual.lora`` through ``set_weights``; this module only adds and removes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from llmdual.core.lora_spec import LoraSpec


class LoraLinear(nn.Linear):
    """``nn.Linear`` plus a low-rank update, ``x @ W.T + b + scale * (x @ lora_A) @ lora_B``; ``lora_A`` is
    ``[in, r]`` and ``lora_B`` ``[r, out]`` (the canonical layout), so ``get_parameter`` finds canonical names."""

    def __init__(self, linear: nn.Linear, rank: int, scale: float):
        with torch.device("meta"):  # the projection's own weight and bias are reused, not allocated
            super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None)
        self.weight, self.bias = linear.weight, linear.bias
        like = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        self.lora_A = nn.Parameter(torch.zeros(linear.in_features, rank, **like))
        self.lora_B = nn.Parameter(torch.zeros(rank, linear.out_features, **like))
        self.scale = scale

    def forward(self, x):
        return super().forward(x) + (x @ self.lora_A @ self.lora_B) * self.scale


def projections(model: nn.Module, spec: LoraSpec) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute) of every target projection, block by block in target order."""
    found = []
    for block in model.h:
        for target in spec.targets:
            parent, leaf = target.split(".")
            found.append((getattr(block, parent), leaf))
    return found


def add_lora(model: nn.Module, spec: LoraSpec) -> None:
    """Give the target projections zero adapters of ``spec`` and freeze every other parameter."""
    for parent, leaf in projections(model, spec):
        setattr(parent, leaf, LoraLinear(getattr(parent, leaf), spec.rank, spec.scale))
    for name, param in model.named_parameters():
        param.requires_grad_(name.endswith((".lora_A", ".lora_B")))
    model.lora = spec


def remove_lora(model: nn.Module) -> None:
    """Put plain ``nn.Linear`` projections (same weight and bias) back, dropping the adapters; unfreeze the model."""
    for parent, leaf in projections(model, model.lora):
        lora = getattr(parent, leaf)
        with torch.device("meta"):
            linear = nn.Linear(lora.in_features, lora.out_features, bias=lora.bias is not None)
        linear.weight, linear.bias = lora.weight, lora.bias
        setattr(parent, leaf, linear)
    for param in model.parameters():
        param.requires_grad_(True)
    model.lora = None
