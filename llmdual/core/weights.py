"""Canonical weights: one flat naming and layout for every parameter, and their numpy initializer.

The naming rule is GPT-2's own (as in its published checkpoints, without a ``transformer.`` prefix)::

    wte.weight                  [vocab_size, d_model]   token embedding
    wpe.weight                  [max_seq_len, d_model]  position embedding
    h.{i}.ln_1.weight / .bias   [d_model]
    h.{i}.attn.c_attn.weight    [d_model, 3*d_model]    fused q, k, v projection
    h.{i}.attn.c_attn.bias      [3*d_model]
    h.{i}.attn.c_proj.weight    [d_model, d_model]
    h.{i}.attn.c_proj.bias      [d_model]
    h.{i}.ln_2.weight / .bias   [d_model]
    h.{i}.mlp.c_fc.weight       [d_model, d_ff]
    h.{i}.mlp.c_fc.bias         [d_ff]
    h.{i}.mlp.c_proj.weight     [d_ff, d_model]
    h.{i}.mlp.c_proj.bias       [d_model]
    ln_f.weight / .bias         [d_model]
    lm_head.weight              [vocab_size, d_model]   LM only, when tie_embeddings is False
    score.weight                [d_model, num_classes]  classifier only
    score.bias                  [num_classes]           classifier only
    h.{i}.attn.c_attn.lora_A    [d_model, r]            LoRA adapters, once added (``llmdual.lora``): on any
    h.{i}.attn.c_attn.lora_B    [r, 3*d_model]          of c_attn, attn.c_proj, c_fc, mlp.c_proj

Layout rule: every projection matrix is stored ``[in, out]`` (GPT-2's Conv1D layout, so ``y = x @ W + b``);
embeddings (and an untied ``lm_head``) are ``[rows, d_model]``. Each backend converts to and from this
layout in exactly one place (its ``weights`` module). Everything is float32, finite, checked by ``check_weights``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from llmdual.core.config import Config

if TYPE_CHECKING:
    from llmdual.core.lora_spec import LoraSpec

TASKS = ("lm", "classifier")


def check_task(task: str) -> str:
    """Return ``task`` if it is a known task, else raise naming the choices."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    return task


def canonical_shapes(config: Config, task: str = "lm", lora: LoraSpec | None = None) -> dict[str, tuple[int, ...]]:
    """Every canonical parameter name mapped to its shape, in a fixed order; ``lora`` appends its adapters
    (``h.{i}.attn.c_attn.lora_A`` ``[in, r]``, ``...lora_B`` ``[r, out]``, see ``llmdual.lora``)."""
    check_task(task)
    C, F = config.d_model, config.d_ff
    shapes: dict[str, tuple[int, ...]] = {
        "wte.weight": (config.vocab_size, C),
        "wpe.weight": (config.max_seq_len, C),
    }
    for i in range(config.n_layers):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (C,),
            p + "ln_1.bias": (C,),
            p + "attn.c_attn.weight": (C, 3 * C),
            p + "attn.c_attn.bias": (3 * C,),
            p + "attn.c_proj.weight": (C, C),
            p + "attn.c_proj.bias": (C,),
            p + "ln_2.weight": (C,),
            p + "ln_2.bias": (C,),
            p + "mlp.c_fc.weight": (C, F),
            p + "mlp.c_fc.bias": (F,),
            p + "mlp.c_proj.weight": (F, C),
            p + "mlp.c_proj.bias": (C,),
        })
    shapes["ln_f.weight"] = (C,)
    shapes["ln_f.bias"] = (C,)
    if task == "lm" and not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, C)
    if task == "classifier":
        shapes["score.weight"] = (C, config.num_classes)
        shapes["score.bias"] = (config.num_classes,)
    if lora is not None:
        shapes.update(lora.shapes(config))
    return shapes


def trainable_shapes(config: Config, task: str = "lm", lora: LoraSpec | None = None) -> dict[str, tuple[int, ...]]:
    """The weights training updates, in canonical order: the adapters when the model has LoRA, else every one."""
    return dict(lora.shapes(config)) if lora is not None else canonical_shapes(config, task)


def init_weights(config: Config, task: str = "lm", seed: int = 0) -> dict[str, np.ndarray]:
    """GPT-2 initialization in numpy: the one source of starting weights for every backend.

    normal(0, 0.02) for matrices and embeddings, residual output projections (``c_proj``) scaled by
    1/sqrt(2 * n_layers), zero biases, unit norm scales. Drawn in canonical order from one seeded
    generator, so a seed fixes every value bit for bit.
    """
    rng = np.random.default_rng(seed)
    residual_std = 0.02 / math.sqrt(2 * config.n_layers)
    weights = {}
    for name, shape in canonical_shapes(config, task).items():
        if name.endswith(".bias"):
            value = np.zeros(shape, np.float32)
        elif ".ln_" in name or name.startswith("ln_"):
            value = np.ones(shape, np.float32)
        else:
            std = residual_std if name.endswith("c_proj.weight") else 0.02
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        weights[name] = value
    return weights


def check_weights(
    weights: Mapping[str, np.ndarray], config: Config, task: str = "lm", lora: LoraSpec | None = None
) -> dict[str, np.ndarray]:
    """Validate names, shapes, dtypes and values against the canonical layout (with ``lora``'s adapters); return
    float32 arrays in order.

    Raises ``ValueError`` listing every missing, unexpected, mis-shaped, non-float and non-finite entry.
    """
    expected = canonical_shapes(config, task, lora)
    arrays = {n: _to_numpy(v) for n, v in weights.items() if n in expected}
    parts = [
        ("missing", [n for n in expected if n not in weights]),
        ("unexpected", sorted(n for n in weights if n not in expected)),
        ("mis-shaped", [f"{n}: got {a.shape}, expected {expected[n]}" for n, a in arrays.items()
                        if a.shape != expected[n]]),
        ("not floating-point", [f"{n}: dtype {a.dtype}" for n, a in arrays.items() if not _is_float(a)]),
    ]
    if not any(found for _, found in parts):
        arrays = {n: np.asarray(arrays[n], dtype=np.float32) for n in expected}
        parts.append(("not finite", [f"{n}: {_non_finite(a)}" for n, a in arrays.items()
                                     if not np.isfinite(a).all()]))
    problems = [f"{label} {found}" for label, found in parts if found]
    if problems:
        raise ValueError(f"weights do not match the {task} model of this config: " + "; ".join(problems)
                         + "; allowed: finite floating-point arrays of exactly the canonical shapes")
    return arrays


def _is_float(array: np.ndarray) -> bool:
    """True for real floating-point dtypes (float16/32/64, and extension floats such as bfloat16)."""
    return np.issubdtype(array.dtype, np.floating) or (array.dtype.kind == "V" and "float" in array.dtype.name)


def _non_finite(array: np.ndarray) -> str:
    """How many NaN and inf values ``array`` holds, e.g. ``2 NaN, 1 inf``."""
    return f"{int(np.isnan(array).sum())} NaN, {int(np.isinf(array).sum())} inf"


def from_hf_gpt2(
    state_dict: Mapping[str, object], hf_config: Mapping[str, object] | None = None
) -> tuple[Config, dict[str, np.ndarray]]:
    """Convert a Hugging Face GPT-2 state dict into a ``Config`` and canonical weights.

    Accepts both ``GPT2LMHeadModel.state_dict()`` (``transformer.`` prefix, ``lm_head.weight``) and the
    published checkpoint files (no prefix, causal-mask buffers such as ``h.0.attn.bias``). Values may be
    numpy arrays or torch tensors. ``hf_config`` is the dict of HF's ``config.json``; without it GPT-2's
    conventions are assumed (64-wide heads, eps 1e-5). HF's Conv1D already stores ``[in, out]``, the
    canonical layout, so matrices pass through unchanged.
    """
    arrays = {}
    for key, value in state_dict.items():
        name = key.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")) and np.ndim(_to_numpy(value)) != 1:
            continue  # old causal-mask buffers, not parameters
        arrays[name] = _to_numpy(value)
    if "wte.weight" not in arrays or "wpe.weight" not in arrays:
        raise ValueError("not a GPT-2 state dict: 'wte.weight' and 'wpe.weight' are required")
    vocab_size, d_model = arrays["wte.weight"].shape
    max_seq_len = arrays["wpe.weight"].shape[0]
    layers = {int(n.split(".")[1]) for n in arrays if n.startswith("h.")}
    n_layers = len(layers)
    if layers != set(range(n_layers)):
        raise ValueError(f"GPT-2 state dict has non-contiguous layers {sorted(layers)}")
    hf = dict(hf_config or {})
    n_heads = int(hf.get("n_head", d_model // 64))
    d_ff = arrays["h.0.mlp.c_fc.weight"].shape[1] if n_layers else 4 * d_model
    lm_head = arrays.pop("lm_head.weight", None)
    tied = lm_head is None or np.array_equal(lm_head, arrays["wte.weight"])
    if tied and hf.get("tie_word_embeddings") is False:
        tied = False
        lm_head = arrays["wte.weight"].copy() if lm_head is None else lm_head
    if not tied:
        arrays["lm_head.weight"] = lm_head
    config = Config(
        vocab_size=int(vocab_size),
        max_seq_len=int(hf.get("n_positions", max_seq_len)),
        d_model=int(d_model),
        n_layers=n_layers,
        n_heads=n_heads,
        d_ff=int(d_ff),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=tied,
    )
    return config, check_weights(arrays, config, "lm")


def to_hf_gpt2(weights: Mapping[str, np.ndarray], config: Config) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """The inverse of ``from_hf_gpt2``: canonical LM weights as a ``GPT2LMHeadModel`` state dict (numpy) and the
    dict of its ``config.json`` (``transformers.GPT2Config(**hf_config)``)."""
    weights = check_weights(weights, config, "lm")
    state = {("lm_head.weight" if name == "lm_head.weight" else f"transformer.{name}"): value.copy()
             for name, value in weights.items()}
    if config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"].copy()
    hf_config = {
        "model_type": "gpt2", "vocab_size": config.vocab_size, "n_positions": config.max_seq_len,
        "n_embd": config.d_model, "n_layer": config.n_layers, "n_head": config.n_heads, "n_inner": config.d_ff,
        "layer_norm_epsilon": config.norm_eps, "activation_function": "gelu_new",
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "tie_word_embeddings": config.tie_embeddings,
    }
    return state, hf_config


def _to_numpy(value: object) -> np.ndarray:
    """numpy view of an array-like (numpy array or CPU/GPU torch tensor) without importing torch."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        value = (value.float() if value.is_floating_point() else value).numpy()
    return np.asarray(value)
