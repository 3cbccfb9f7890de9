"""Reference GPT-2 implementations (HF transformers, keras-hub, nanoGPT) at an llmdual config's size, holding
llmdual's canonical weights through their own loaders, so timings compare implementations, not models."""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from llmdual.core.config import Config
from llmdual.core.weights import check_weights, init_weights

# nanoGPT's nn.Linear stores [out, in]; these canonical [in, out] matrices are transposed for it.
_NANOGPT_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_gpt2_config(config: Config) -> dict[str, Any]:
    """The Hugging Face ``GPT2Config`` (as ``config.json``) of an llmdual LM config: same sizes, GPT-2's
    tanh-approximated GELU, no dropout, tied head, no special tokens (random weights have no vocabulary)."""
    if not config.tie_embeddings:
        raise ValueError("the reference GPT-2 implementations tie the LM head to the token embedding; "
                         "use a config with tie_embeddings=True")
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.max_seq_len,
        "n_embd": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": config.d_ff,
        "activation_function": "gelu_new",
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "layer_norm_epsilon": config.norm_eps,
        "tie_word_embeddings": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }


def write_hf_checkpoint(config: Config, weights: Mapping[str, np.ndarray], directory: str | Path) -> Path:
    """Write canonical LM weights as a Hugging Face GPT-2 checkpoint (``config.json``, ``model.safetensors``).

    Canonical names and layout are those of GPT-2's published files, so the tensors are written unchanged.
    """
    hf_config = hf_gpt2_config(config)
    if config.d_ff != 4 * config.d_model:
        raise ValueError(f"keras-hub's GPT-2 loader assumes d_ff = 4 * d_model; got d_ff {config.d_ff}")
    weights = check_weights(weights, config, "lm")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    save_file({name: np.ascontiguousarray(value) for name, value in weights.items()},
              str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def build_hf(checkpoint: str | Path) -> Any:
    """``transformers.GPT2LMHeadModel`` from a checkpoint written by ``write_hf_checkpoint``, with the library's
    defaults (attention implementation included), in eval mode."""
    import transformers

    return transformers.GPT2LMHeadModel.from_pretrained(str(checkpoint)).eval()


def build_keras_hub(checkpoint: str | Path) -> Any:
    """keras-hub's ``GPT2CausalLM`` (``GPT2Backbone`` and its tied LM head) from the same checkpoint, converted by
    keras-hub's own Hugging Face loader; no preprocessor (inputs are token ids)."""
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone.from_preset(str(checkpoint))
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def load_nanogpt_module(path: str | Path) -> Any:
    """Import nanoGPT's ``model.py`` from a user's checkout (a file, or the directory holding it)."""
    path = Path(path)
    path = path / "model.py" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"nanoGPT model file not found: {path}")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    for name in ("GPT", "GPTConfig"):
        if not hasattr(module, name):
            raise ImportError(f"{path} defines no {name}: not nanoGPT's model.py")
    return module


def build_nanogpt(path: str | Path, config: Config, weights: Mapping[str, np.ndarray]) -> Any:
    """nanoGPT's ``GPT`` at ``config``'s size holding the canonical weights (biases on, no dropout), eval mode.

    nanoGPT's MLP uses the exact (erf) GELU where GPT-2 uses the tanh approximation, so its logits differ from
    the others' by a little more than rounding (``llmdual.bench.engines.table.NANOGPT_TOLERANCE``).
    """
    import torch

    module = load_nanogpt_module(path)
    weights = check_weights(weights, config, "lm")
    if config.d_ff != 4 * config.d_model or config.norm_eps != 1e-5:
        raise ValueError("nanoGPT fixes d_ff = 4 * d_model and LayerNorm eps 1e-5")
    model = module.GPT(module.GPTConfig(block_size=config.max_seq_len, vocab_size=config.vocab_size,
                                        n_layer=config.n_layers, n_head=config.n_heads, n_embd=config.d_model,
                                        dropout=0.0, bias=True))
    state = {}
    for name, value in weights.items():
        value = value.T if name.endswith(_NANOGPT_TRANSPOSED) else value
        state[f"transformer.{name}"] = torch.from_numpy(np.ascontiguousarray(value))
    state["lm_head.weight"] = state["transformer.wte.weight"]  # tied, as nanoGPT ties them
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not name.endswith(".attn.bias")]  # causal-mask buffer, not a weight
    if missing or unexpected:
        raise ValueError(f"nanoGPT state dict mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def checkpoint(config: Config, seed: int, build: Callable[[str], Any]) -> Any:
    """``build`` over a Hugging Face GPT-2 checkpoint of the canonical LM weights of ``config`` and ``seed``."""
    with tempfile.TemporaryDirectory(prefix="llmdual-ref-") as tmp:
        write_hf_checkpoint(config, init_weights(config, "lm", seed), tmp)
        return build(tmp)
