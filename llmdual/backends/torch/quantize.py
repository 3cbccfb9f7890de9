"""Int8 in PyTorch: torchao's ``quantize_`` on the model's ``nn.Linear`` projections. Mirrors
``llmdual/backends/keras/quantize.py``.

``Int8DynamicActivationInt8WeightConfig``: int8 weights, symmetric, one scale per output channel (``PerRow``), and
each input quantized on the fly, symmetric, one scale per token. Embeddings (so the tied LM head, ``F.linear`` on
``wte.weight``), layer norms and biases stay float32.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

# torchao warns on import about its CUDA-only kernels it cannot load on a CPU build, and torch about an Enum it
# registers with torch.compile; neither concerns int8 on the CPU
_IMPORT_WARNINGS = ("torchao", "torch.utils._pytree")


def quantize(model: nn.Module, scheme: str) -> None:
    """Quantize every ``nn.Linear`` of ``model`` in place with torchao (``scheme`` is checked by the caller)."""
    levels = {name: logging.getLogger(name).level for name in _IMPORT_WARNINGS}
    for name in levels:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    # set_inductor_config would change torch.compile's global settings for every other model of the process
    quantize_(model, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    model.quantized = scheme  # its decoding step then stays eager (``decode.compiled``)


def weight_bytes(model: nn.Module) -> int:
    """Bytes the model's weights take in memory: int8 data and scales of quantized tensors, the rest as stored."""
    def size(tensor: torch.Tensor | None) -> int:
        if tensor is None:
            return 0
        if type(tensor) not in (torch.Tensor, nn.Parameter) and hasattr(tensor, "__tensor_flatten__"):
            names, _ = tensor.__tensor_flatten__()  # a torchao tensor: its int8 data and scales
            return sum(size(getattr(tensor, name)) for name in names)
        return tensor.numel() * tensor.element_size()

    return sum(size(t) for t in model.state_dict().values())
