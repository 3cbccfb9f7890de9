"""The one place where PyTorch parameters convert to and from canonical weights (see ``llmdual.core.weights``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from llmdual.core.weights import canonical_shapes, check_weights


def stored_transposed(name: str) -> bool:
    """``nn.Linear`` keeps ``[out, in]``: every canonical ``[in, out]`` matrix is stored transposed here (LoRA
    adapters are kept ``[in, r]``/``[r, out]``, canonical, see ``lora.py``)."""
    return name.endswith(".weight") and name.split(".")[-2] in ("c_attn", "c_proj", "c_fc", "score")


def get_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """Canonical name -> float32 numpy copy of every parameter (a copy: ``.numpy()`` of a CPU tensor shares its
    memory, so a snapshot would follow training); of a model sharded by FSDP2, gathered by every rank at once."""
    weights = {}
    for name in canonical_shapes(model.config, model.task, model.lora):
        value = model.get_parameter(name).detach()
        value = (value.full_tensor() if isinstance(value, DTensor) else value).float().cpu().numpy()
        weights[name] = np.array(value.T if stored_transposed(name) else value, order="C")
    return weights


def set_weights(model: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Copy canonical weights into the model, validating names and shapes first."""
    weights = check_weights(weights, model.config, model.task, model.lora)
    with torch.no_grad():
        for name, value in weights.items():
            param = model.get_parameter(name)
            value = value.T if stored_transposed(name) else value
            param.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(param.dtype))
