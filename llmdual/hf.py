"""Hugging Face both ways: ``from_hf`` reads a GPT-2, Llama, Qwen2 or Mistral (no sliding window) config and state
dict, or a local ``save_pretrained`` folder; ``to_hf`` writes a folder ``AutoModelForCausalLM.from_pretrained``
loads offline. The name tables are in ``llmdual.core.weights`` (one per family); files are safetensors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.api import get_weights
from llmdual.core.config import Config
from llmdual.core.io import atomic_write_dir
from llmdual.core.weights import LLAMA_FAMILY, from_hf_gpt2, from_hf_llama, hf_family, to_hf_gpt2, to_hf_llama

FAMILIES = ("gpt2", *LLAMA_FAMILY)


def from_hf(config_or_folder: Any, state_dict: Mapping[str, object] | None = None) -> tuple[Config, dict[str, np.ndarray]]:
    """``Config`` and canonical weights of a Hugging Face causal LM: a ``save_pretrained`` folder (``config.json``
    and safetensors weights), or a config (``PretrainedConfig`` or the dict of its ``config.json``) with its
    ``state_dict`` (numpy arrays or torch tensors). Build the model with ``llmdual.build(config, weights=...)``."""
    if isinstance(config_or_folder, (str, Path)):
        if state_dict is not None:
            raise ValueError("from_hf takes a folder alone (its weights are read from it), or a config and a state_dict")
        hf_config, state_dict = read_folder(Path(config_or_folder))
    else:
        hf_config = config_or_folder.to_dict() if hasattr(config_or_folder, "to_dict") else dict(config_or_folder)
        if state_dict is None:
            raise ValueError("from_hf needs the state_dict beside a config (or a save_pretrained folder alone)")
    kind = hf_config.get("model_type")
    if kind not in FAMILIES:
        raise ValueError(f"unsupported Hugging Face model_type {kind!r}; allowed: {list(FAMILIES)}")
    if kind == "gpt2":
        return from_hf_gpt2(state_dict, hf_config)
    return from_hf_llama(state_dict, hf_config)


def read_folder(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The ``config.json`` dict and every tensor of the ``*.safetensors`` files of a ``save_pretrained`` folder."""
    from safetensors.numpy import load_file

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} is not a Hugging Face model folder: it has no config.json")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder} has no *.safetensors weights (save_pretrained writes them by default)")
    state: dict[str, np.ndarray] = {}
    for file in files:
        state.update(load_file(str(file)))
    return json.loads(config_file.read_text()), state


def to_hf(model: Any, folder: str | Path, overwrite: bool = False) -> Path:
    """Write ``model`` (a task ``lm`` model of any backend) as a Hugging Face folder: ``config.json`` and
    ``model.safetensors`` for ``GPT2LMHeadModel``, ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` (whichever
    computes what its Config does); written to a temporary folder and renamed into place. A folder holding other
    files is refused unless ``overwrite`` (then only this export's own files are replaced)."""
    if model.task != "lm":
        raise ValueError(f"to_hf writes causal LMs; this model's task is {model.task!r}")
    config = model.config
    weights = get_weights(model)
    if hf_family(config) == "gpt2":
        state, hf_config = to_hf_gpt2(weights, config)
        hf_config["architectures"] = ["GPT2LMHeadModel"]
    else:
        state, hf_config = to_hf_llama(weights, config)

    def write(tmp: str) -> None:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(Path(tmp) / "model.safetensors"),
                  metadata={"format": "pt"})  # transformers reads only files marked with a framework
        (Path(tmp) / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")

    return atomic_write_dir(folder, write, "hf-pretrained", overwrite)
