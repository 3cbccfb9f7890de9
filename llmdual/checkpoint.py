"""Checkpoints: config, task and canonical weights in one safetensors file, written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from llmdual.api import build, get_weights
from llmdual.backend import backend_of
from llmdual.config import Config
from llmdual.files import atomic_write
from llmdual.weights import check_task, check_weights

FORMAT = "llmdual/1"


def save(model: Any, path: str | Path) -> Path:
    """Write the model's config, task and canonical fp32 weights to ``path`` (one safetensors file)."""
    backend_of(model)  # fail early on a foreign object
    metadata = {"format": FORMAT, "task": model.task, "config": model.config.to_json()}
    weights = get_weights(model)
    return atomic_write(path, lambda tmp: save_file(weights, tmp, metadata=metadata))


def read(path: str | Path) -> tuple[Config, str, dict[str, np.ndarray]]:
    """Config, task and weights of a checkpoint; ``ValueError`` if it is truncated, foreign or inconsistent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors checkpoint (truncated or corrupt?): {err}") from err
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not an llmdual checkpoint: format {metadata.get('format')!r}, expected {FORMAT!r}")
    try:
        config = Config.from_json(metadata["config"])
        task = check_task(metadata["task"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} has corrupt checkpoint metadata: {err}") from err
    return config, task, check_weights(weights, config, task)


def load(path: str | Path, backend: str = "torch") -> Any:
    """Restore a checkpoint into either backend, bit-identical in fp32."""
    config, task, weights = read(path)
    return build(config, backend, task, weights=weights)
