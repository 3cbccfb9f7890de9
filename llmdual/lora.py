"""LoRA adapters, backend-neutral: which projections take them, their canonical names and numpy initializer,
adding, merging, saving and loading them in either backend, and PEFT's on-disk format.

An adapter on projection ``W`` (``[in, out]``) is ``lora_A`` (``[in, r]``) and ``lora_B`` (``[r, out]``), named
after it (``h.0.attn.c_attn.lora_A``); the layer computes ``x @ W + b + (alpha / r) * x @ A @ B``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.api import get_weights, refuse_quantized, set_weights
from llmdual.contract import backend_of
from llmdual.core.config import Config
from llmdual.core.io import atomic_write, read_checked, write_checked
from llmdual.core.lora_spec import LORA_FORMAT, LoraSpec, init_lora, lora_spec
from llmdual.core.weights import canonical_shapes


def add_lora(model: Any, rank: int = 8, alpha: float = 16.0, targets: str | Iterable[str] = ("c_attn",),
             seed: int = 0, init_b: str = "zeros") -> None:
    """Add adapters to the ``targets`` projections of every block and freeze every other weight.

    Targets: ``c_attn``, ``c_proj`` (the attention output, ``attn.c_proj``), ``c_fc``, ``mlp.c_proj``, or any
    canonical ``attn.``/``mlp.`` name. ``ValueError`` for a bad rank, alpha or target, or adapters already there.
    """
    backend = backend_of(model, "lora")
    refuse_quantized(model, "add LoRA adapters", "add them to the float32 model, merge_lora, then llmdual.quantize")
    if model.lora is not None:
        raise ValueError(f"the model already has LoRA adapters ({describe(model.lora)}); adapters are added once: "
                         "merge_lora(model) first to add new ones")
    spec = lora_spec(model.config, rank, alpha, targets)
    adapters = init_lora(model.config, spec, seed, init_b)
    weights = get_weights(model)
    backend.add_lora(model, spec)
    set_weights(model, {**weights, **adapters})


def merge_lora(model: Any) -> None:
    """Fold the adapters into their projections (``W + (alpha / r) * A @ B``, float32), remove them and unfreeze
    the model; ``ValueError`` if it has none."""
    spec = require_lora(model, "merge")
    weights = get_weights(model)
    scale = np.float32(spec.scale)
    merged = {name: weights[name] for name in canonical_shapes(model.config, model.task)}
    for name in spec.shapes(model.config):
        if name.endswith("lora_A"):
            base = name.removesuffix("lora_A")
            delta = weights[base + "lora_A"] @ weights[base + "lora_B"]
            merged[base + "weight"] = merged[base + "weight"] + scale * delta
    backend_of(model).remove_lora(model)
    set_weights(model, merged)


def require_lora(model: Any, action: str) -> LoraSpec:
    """The model's ``LoraSpec``; ``ValueError`` if it has no adapters to ``action``."""
    backend_of(model)
    if model.lora is None:
        raise ValueError(f"cannot {action} LoRA adapters: the model has none (add them with add_lora or load_lora)")
    return model.lora


def describe(spec: LoraSpec) -> str:
    """``rank 8, alpha 16, targets ['attn.c_attn']``."""
    return f"rank {spec.rank}, alpha {spec.alpha:g}, targets {list(spec.targets)}"


def adapters_of(model: Any) -> dict[str, np.ndarray]:
    """The model's adapter weights alone, by canonical name."""
    spec = require_lora(model, "read")
    weights = get_weights(model)
    return {name: weights[name] for name in spec.shapes(model.config)}


def save_lora(model: Any, path: str | Path) -> Path:
    """Write the adapters alone (checksummed safetensors, atomically) with their rank, alpha, targets and the
    model's config and task in the metadata."""
    spec = require_lora(model, "save")
    metadata = {"format": LORA_FORMAT, "lora": spec.to_json(), "config": model.config.to_json(), "task": model.task}
    return write_checked(path, adapters_of(model), metadata)


def read_lora(path: str | Path) -> tuple[LoraSpec, Config, str, dict[str, np.ndarray]]:
    """Spec, config, task and adapters of a file written by ``save_lora`` (checksum verified)."""
    metadata, adapters = read_checked(path, "LoRA adapter file", LORA_FORMAT)
    try:
        spec = LoraSpec.from_json(metadata["lora"])
        config = Config.from_json(metadata["config"])
        task = metadata["task"]
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} has corrupt LoRA metadata: {err}") from err
    return spec, config, task, adapters


def check_compatible(model: Any, spec: LoraSpec, config: Config, task: str, source: str) -> None:
    """``ValueError`` unless adapters of ``spec`` made for a ``task`` model of ``config`` fit ``model``."""
    ours = dataclasses.replace(model.config, dropout=0.0)
    if dataclasses.replace(config, dropout=0.0) != ours or task != model.task:
        raise ValueError(f"{source} holds adapters for a {task} model of {config}, not this {model.task} model "
                         f"of {model.config}")
    if model.lora is not None and model.lora != spec:
        raise ValueError(f"{source} holds LoRA adapters of {describe(spec)}; the model has {describe(model.lora)}: "
                         "load them into a model with the same adapters, or one without adapters")


def load_lora(model: Any, path: str | Path) -> None:
    """Load adapters saved by ``save_lora`` (from either backend): into a model without adapters (they are added),
    or over adapters of the same rank, alpha and targets; ``ValueError`` for any other model or adapters."""
    backend = backend_of(model, "lora")
    spec, config, task, adapters = read_lora(path)
    check_compatible(model, spec, config, task, str(path))
    weights = get_weights(model)
    if model.lora is None:
        backend.add_lora(model, spec)
    set_weights(model, {**weights, **adapters})


def save_lora_peft(model: Any, folder: str | Path) -> Path:
    """Write the adapters of an LM in PEFT's format (``adapter_config.json``, ``adapter_model.safetensors``) for
    ``PeftModel.from_pretrained`` on Hugging Face's ``GPT2LMHeadModel``; returns the folder."""
    spec = require_lora(model, "export")
    if model.task != "lm":
        raise ValueError(f"PEFT export is for GPT2LMHeadModel: the model is a {model.task}, not an lm")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"base_model.model.transformer.{name}.weight": value.T  # PEFT keeps nn.Linear's [out, in]
               for name, value in adapters_of(model).items()}
    write_checked(folder / "adapter_model.safetensors", tensors, {"format": "pt"})
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": spec.rank, "lora_alpha": spec.alpha,
        "target_modules": list(spec.targets), "fan_in_fan_out": True, "lora_dropout": 0.0, "bias": "none",
        "inference_mode": True, "base_model_name_or_path": None,
    }
    atomic_write(folder / "adapter_config.json", lambda tmp: Path(tmp).write_text(json.dumps(peft_config, indent=2)))
    return folder

