"""The public, backend-neutral API: build a model, move canonical weights in and out, run it on numpy, and save
or load it as a model file. Every call dispatches through the backend registry (``llmdual.contract``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from llmdual import contract
from llmdual.contract import backend_of
from llmdual.core.config import Config
from llmdual.core.io import read_model_file, write_model_file
from llmdual.core.weights import check_task, init_weights


def build(
    config: Config,
    backend: str = "torch",
    task: str = "lm",
    seed: int = 0,
    weights: Mapping[str, np.ndarray] | None = None,
) -> Any:
    """The native model (``torch.nn.Module`` or ``keras.Model``) holding ``weights``, by default the shared
    numpy initializer's for ``seed``; ``ValueError`` if it cannot fit in this machine's RAM
    (``Config.check_memory``)."""
    if not isinstance(config, Config):
        raise TypeError(f"config must be an llmdual.Config, got {type(config).__name__}")
    check_task(task)
    config.check_memory(task)  # before any allocation: a model that cannot fit fails here, not in the allocator
    model = contract.backend(backend).build(config, task)
    set_weights(model, init_weights(config, task, seed) if weights is None else weights)
    return model


def get_weights(model: Any) -> dict[str, np.ndarray]:
    """Every weight as float32 numpy, by canonical name and layout; ``ValueError`` for a quantized model."""
    backend = backend_of(model)
    refuse_quantized(model, "get its weights", "take llmdual.get_weights(model) before llmdual.quantize(model)")
    return backend.get_weights(model)


def set_weights(model: Any, weights: Mapping[str, np.ndarray]) -> None:
    """Load canonical weights; ``ValueError`` listing missing, unexpected or mis-shaped entries, or for a quantized
    model."""
    backend = backend_of(model)
    refuse_quantized(model, "set its weights", "set them on a float32 model, then llmdual.quantize it")
    backend.set_weights(model, weights)


def refuse_quantized(model: Any, action: str, instead: str) -> None:
    """``ValueError`` if ``model`` was quantized (``llmdual.quantize``): its projection weights are int8 with
    per-channel scales, not canonical float32 weights."""
    scheme = getattr(model, "quantized", None)
    if scheme is not None:
        raise ValueError(f"cannot {action}: the model is quantized ({scheme}), its projection weights are int8 "
                         f"with per-channel scales; {instead}")


def forward(model: Any, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    """Numpy ids (B, T) in, numpy logits out (LM: (B, T, vocab); classifier: (B, num_classes)): float32, float64
    from the float64 reference backend."""
    return backend_of(model).forward(model, input_ids, attention_mask)


def save(model: Any, path: str | Path) -> Path:
    """Write the model's config, task and canonical fp32 weights to ``path`` as a model file (atomic); a quantized
    model is refused (quantize after loading instead), and so is one with LoRA adapters (``llmdual.merge_lora``
    folds them in, ``llmdual.save_lora`` saves them). A symlink at ``path`` stays a link and its target gets the
    file; an existing file keeps its mode, and a read-only one is refused (``PermissionError``), as ``cp`` does."""
    backend_of(model)  # fail early on a foreign object
    refuse_quantized(model, "save it", "save the float32 model (llmdual.save before llmdual.quantize) and "
                     "quantize it again after llmdual.load")
    if model.lora is not None:
        raise ValueError("the model has LoRA adapters: llmdual.merge_lora(model) folds them into its weights "
                         "before save, or llmdual.save_lora(model, path) saves the adapters alone")
    return write_model_file(path, model.config, model.task, get_weights(model))


def read_model(path: str | Path) -> tuple[Config, str, dict[str, np.ndarray]]:
    """Config, task and canonical weights of a model file, without building a model."""
    return read_model_file(path)


def load(path: str | Path, backend: str = "torch") -> Any:
    """Restore a model file into either backend, bit-identical in fp32."""
    config, task, weights = read_model_file(path)
    return build(config, backend, task, weights=weights)
