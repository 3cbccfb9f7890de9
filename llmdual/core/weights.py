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

The Llama family (Llama, Qwen2, Mistral) keeps these llmdual names for the same roles, so one block code and one
LoRA naming serve every family; what its Config changes is which weights exist and their widths:

    wpe.weight                  absent with rotary positions (RoPE has no weights)
    ln_*.bias                   absent with RMSNorm (``norm="rms"``: a scale only)
    h.{i}.attn.c_attn.weight    [d_model, (n_heads + 2*n_kv_heads) * head_dim]   q, then k, then v (GQA: fewer
                                                                                 k and v heads)
    h.{i}.mlp.c_fc.weight       [d_model, 2*d_ff]       SwiGLU's gate, then up (``silu(gate) * up``)
    *.bias                      only where the config has them (``qkv_bias``, ``attn_bias``, ``mlp_bias``)
    score.bias                  absent with last-token pooling (LlamaForSequenceClassification has none)

Hugging Face names are converted in one table per family (``HF_LLAMA`` below; GPT-2's names are its own).

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
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (config.vocab_size, C)}
    if config.positions == "learned":
        shapes["wpe.weight"] = (config.max_seq_len, C)
    for i in range(config.n_layers):
        p = f"h.{i}."
        shapes.update(_norm(config, p + "ln_1"))
        shapes.update(_linear(p + "attn.c_attn", C, config.qkv_width, config.qkv_biased))
        shapes.update(_linear(p + "attn.c_proj", C, C, config.attn_bias))
        shapes.update(_norm(config, p + "ln_2"))
        shapes.update(_linear(p + "mlp.c_fc", C, config.fc_width, config.mlp_bias))
        shapes.update(_linear(p + "mlp.c_proj", F, C, config.mlp_bias))
    shapes.update(_norm(config, "ln_f"))
    if task == "lm" and not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, C)
    if task == "classifier":
        shapes.update(_linear("score", C, config.num_classes, config.pooling == "mean"))
    if lora is not None:
        shapes.update(lora.shapes(config))
    return shapes


def _linear(name: str, n_in: int, n_out: int, bias: bool) -> dict[str, tuple[int, ...]]:
    """A projection's canonical weight ``[in, out]`` and, when it has one, its bias."""
    return {f"{name}.weight": (n_in, n_out), **({f"{name}.bias": (n_out,)} if bias else {})}


def _norm(config: Config, name: str) -> dict[str, tuple[int, ...]]:
    """A norm's scale, and LayerNorm's bias (RMSNorm has none)."""
    C = config.d_model
    return {f"{name}.weight": (C,), **({f"{name}.bias": (C,)} if config.norm == "layer" else {})}


def trainable_shapes(config: Config, task: str = "lm", lora: LoraSpec | None = None) -> dict[str, tuple[int, ...]]:
    """The weights training updates, in canonical order: the adapters when the model has LoRA, else every one."""
    return dict(lora.shapes(config)) if lora is not None else canonical_shapes(config, task)


def init_weights(config: Config, task: str = "lm", seed: int = 0) -> dict[str, np.ndarray]:
    """GPT-2 initialization in numpy (for every family): the one source of starting weights for every backend.

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


# Hugging Face's Llama-family names (Llama, Qwen2, Mistral) for each canonical name, ``{i}`` the layer: a fused
# canonical projection lists its parts in order (q, k, v; gate, up), each HF ``[out, in]`` (nn.Linear's layout).
HF_LLAMA: dict[str, tuple[str, ...]] = {
    "wte.weight": ("model.embed_tokens.weight",),
    "h.{i}.ln_1.weight": ("model.layers.{i}.input_layernorm.weight",),
    **{f"h.{{i}}.attn.c_attn.{leaf}": tuple(f"model.layers.{{i}}.self_attn.{p}_proj.{leaf}" for p in "qkv")
       for leaf in ("weight", "bias")},
    **{f"h.{{i}}.attn.c_proj.{leaf}": (f"model.layers.{{i}}.self_attn.o_proj.{leaf}",) for leaf in ("weight", "bias")},
    "h.{i}.ln_2.weight": ("model.layers.{i}.post_attention_layernorm.weight",),
    **{f"h.{{i}}.mlp.c_fc.{leaf}": tuple(f"model.layers.{{i}}.mlp.{p}_proj.{leaf}" for p in ("gate", "up"))
       for leaf in ("weight", "bias")},
    **{f"h.{{i}}.mlp.c_proj.{leaf}": (f"model.layers.{{i}}.mlp.down_proj.{leaf}",) for leaf in ("weight", "bias")},
    "ln_f.weight": ("model.norm.weight",),
    "lm_head.weight": ("lm_head.weight",),
}
LLAMA_FAMILY = ("llama", "qwen2", "mistral")


def _hf_parts(name: str, config: Config) -> tuple[list[str], list[int], bool]:
    """The HF names of canonical ``name``, the widths of its parts, and whether its matrix is transposed there."""
    layer = name.split(".")[1] if name.startswith("h.") else ""
    key = name.replace(f"h.{layer}.", "h.{i}.", 1) if layer else name
    names = [n.format(i=layer) for n in HF_LLAMA[key]]
    if ".c_attn." in name:
        q, kv = config.n_heads * config.head_dim, config.kv_heads * config.head_dim
        widths = [q, kv, kv]
    else:
        widths = [config.d_ff] * len(names)
    return names, widths, name.endswith(".weight") and key.startswith("h.") and ".ln_" not in key


def from_hf_llama(
    state_dict: Mapping[str, object], hf_config: Mapping[str, object]
) -> tuple[Config, dict[str, np.ndarray]]:
    """Convert a Hugging Face Llama, Qwen2 or Mistral (no sliding window) state dict and the dict of its
    ``config.json`` into a ``Config`` and canonical weights (fused q/k/v and gate/up, matrices ``[in, out]``)."""
    config = llama_config(hf_config)
    arrays = {k: _to_numpy(v) for k, v in state_dict.items() if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_embeddings:
        arrays.pop("lm_head.weight", None)  # a tied head saved beside the embedding
    weights, used = {}, set()
    for name in canonical_shapes(config, "lm"):
        names, _, transposed = _hf_parts(name, config)
        missing = [n for n in names if n not in arrays]
        if missing:
            raise ValueError(f"Hugging Face {hf_config.get('model_type')} state dict lacks {missing} for this "
                             f"config (from its config.json)")
        parts = [arrays[n] for n in names]
        weights[name] = np.concatenate(parts, axis=0).T if transposed else np.concatenate(parts, axis=0)
        used.update(names)
    unexpected = sorted(set(arrays) - used)
    if unexpected:
        raise ValueError(f"Hugging Face {hf_config.get('model_type')} state dict has weights this config does not "
                         f"use: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    return config, check_weights(weights, config, "lm")


def llama_config(hf_config: Mapping[str, object]) -> Config:
    """The ``Config`` of a Hugging Face Llama, Qwen2 or Mistral ``config.json`` dict; ``ValueError`` naming a
    feature llmdual does not model (rope scaling, a sliding window, a decoupled head_dim, another activation)."""
    hf = dict(hf_config)
    kind = hf.get("model_type")
    if kind not in LLAMA_FAMILY:
        raise ValueError(f"model_type {kind!r} is not of the Llama family; allowed: {list(LLAMA_FAMILY)}")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    d_model, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    max_seq_len = int(hf.get("max_position_embeddings", 2048))
    window = hf.get("sliding_window") if kind == "mistral" or hf.get("use_sliding_window") else None
    problems = [
        f"{what} (llmdual models {allowed} only)" for what, allowed, bad in [
            (f"rope type {rope.get('rope_type')!r}", "'default' rope", rope.get("rope_type", "default") != "default"),
            (f"sliding_window {window}", "full attention", window is not None and int(window) < max_seq_len),
            (f"head_dim {hf.get('head_dim')}", "hidden_size / num_attention_heads",
             hf.get("head_dim") not in (None, d_model // n_heads)),
            (f"hidden_act {hf.get('hidden_act', 'silu')!r}", "'silu'", hf.get("hidden_act", "silu") != "silu"),
        ] if bad
    ]
    if problems:
        raise ValueError(f"unsupported Hugging Face {kind} config: " + "; ".join(problems))
    qwen = kind == "qwen2"
    return Config(
        vocab_size=int(hf["vocab_size"]), max_seq_len=max_seq_len, d_model=d_model,
        n_layers=int(hf["num_hidden_layers"]), n_heads=n_heads, n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        d_ff=int(hf["intermediate_size"]), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), norm="rms", mlp="swiglu", positions="rotary",
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        attn_bias=bool(hf.get("attention_bias", False)) and not qwen, qkv_bias=True if qwen else None,
        mlp_bias=bool(hf.get("mlp_bias", False)), pooling="last",
    )


def to_hf_llama(weights: Mapping[str, np.ndarray], config: Config) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """The inverse of ``from_hf_llama``: canonical LM weights as a ``LlamaForCausalLM`` (or, for q/k/v-only
    biases, ``Qwen2ForCausalLM``) state dict (numpy) and the dict of its ``config.json``; ``ValueError`` for a
    config no such architecture has."""
    kind = hf_family(config)
    if kind not in LLAMA_FAMILY:
        raise ValueError(f"this Config is of the {kind} family, not Llama's; use to_hf_gpt2")
    weights = check_weights(weights, config, "lm")
    state = {}
    for name, value in weights.items():
        names, widths, transposed = _hf_parts(name, config)
        value = value.T if transposed else value
        for hf_name, part in zip(names, np.split(value, np.cumsum(widths)[:-1], axis=0) if len(names) > 1 else [value]):
            state[hf_name] = np.ascontiguousarray(part)
    hf_config: dict[str, object] = {
        "model_type": kind, "architectures": [f"{'Qwen2' if kind == 'qwen2' else 'Llama'}ForCausalLM"],
        "vocab_size": config.vocab_size, "hidden_size": config.d_model, "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads, "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta}, "hidden_act": "silu",
        "tie_word_embeddings": config.tie_embeddings, "attention_dropout": config.dropout, "dtype": "float32",
    }
    if kind == "llama":
        hf_config.update(attention_bias=config.attn_bias, mlp_bias=config.mlp_bias, head_dim=config.head_dim)
    else:
        hf_config.update(use_sliding_window=False, sliding_window=None)
    return state, hf_config


def hf_family(config: Config) -> str:
    """The Hugging Face architecture that computes what ``config`` does: ``gpt2``, ``llama`` or ``qwen2``;
    ``ValueError`` for a mix no published architecture has (e.g. RMSNorm with learned positions)."""
    gpt2 = ("layer", "gelu", "learned", True, True, True)
    arch = (config.norm, config.mlp, config.positions)
    biases = (config.qkv_biased, config.attn_bias, config.mlp_bias)
    if (*arch, *biases) == gpt2 and config.kv_heads == config.n_heads:
        return "gpt2"
    if arch == ("rms", "swiglu", "rotary"):
        if biases == (True, False, False):
            return "qwen2"
        if config.qkv_biased == config.attn_bias:
            return "llama"
    raise ValueError(f"no Hugging Face architecture has norm={config.norm!r}, mlp={config.mlp!r}, "
                     f"positions={config.positions!r} with biases qkv={biases[0]}, attn={biases[1]}, mlp={biases[2]}"
                     f"{'' if arch != gpt2[:3] else f' and {config.kv_heads} kv heads'}; allowed: GPT-2's "
                     "(LayerNorm, GELU, learned, every bias) or the Llama family's (RMSNorm, SwiGLU, rotary)")
