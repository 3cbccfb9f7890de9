"""Model configuration shared by both backends: one frozen dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INT_FIELDS = ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "d_ff", "num_classes")
BOOL_FIELDS = ("tie_embeddings", "attn_bias", "mlp_bias")
# The architecture's choices, each field's allowed values; the first is GPT-2's and the default.
CHOICES = {
    "norm": ("layer", "rms"),
    "mlp": ("gelu", "swiglu"),
    "positions": ("learned", "rotary"),
    "pooling": ("mean", "last"),
}
DEFAULT_ROPE_THETA = 10000.0


@dataclass(frozen=True)
class Config:
    """Hyper-parameters of a decoder-only transformer (LM or classifier): GPT-2 by default, the Llama family
    (Llama, Qwen2, Mistral) with ``norm="rms"``, ``mlp="swiglu"``, ``positions="rotary"`` and no biases.

    ``d_ff`` defaults to ``4 * d_model``; ``num_classes`` is only used by the classifier. ``n_kv_heads``: the
    key/value heads of grouped-query attention (None: ``n_heads``, multi-head; 1: multi-query). Biases:
    ``attn_bias`` on the attention projections, ``qkv_bias`` overrides it for q, k, v alone (None: as
    ``attn_bias``; Qwen2: True with ``attn_bias`` False), ``mlp_bias`` on the MLP. ``rope_theta``: the rotary
    base (None: 10000 with rotary positions; refused with learned ones). ``pooling``: the classifier's, ``mean``
    over real tokens with bidirectional blocks (GPT-2's here) or ``last`` real token with causal blocks and a
    bias-free score (``LlamaForSequenceClassification``). Integer fields accept numpy integers (stored as
    ``int``), never bools; float fields must be finite.
    """

    vocab_size: int
    max_seq_len: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int | None = None
    dropout: float = 0.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    num_classes: int = 2
    norm: str = "layer"
    mlp: str = "gelu"
    positions: str = "learned"
    rope_theta: float | None = None
    n_kv_heads: int | None = None
    attn_bias: bool = True
    qkv_bias: bool | None = None
    mlp_bias: bool = True
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.d_ff is None and _is_int(self.d_model):
            object.__setattr__(self, "d_ff", 4 * int(self.d_model))
        problems = []
        for name in INT_FIELDS:
            value = getattr(self, name)
            if value is None and name == "d_ff":
                continue  # d_model is invalid, and reported
            if not _is_int(value) or value <= 0:
                problems.append(f"{name} must be a positive integer (not a bool or float), got {value!r}")
            else:
                object.__setattr__(self, name, int(value))
        if not problems and self.d_model % self.n_heads != 0:
            problems.append(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        problems += self._architecture_problems(heads_ok=not problems)
        if not _is_real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1) (a finite number), got {self.dropout!r}")
        if not _is_real(self.norm_eps) or not 0 < self.norm_eps < math.inf:
            problems.append(f"norm_eps must be a finite positive number, got {self.norm_eps!r}")
        if problems:
            raise ValueError("invalid Config: " + "; ".join(problems))
        for name in ("dropout", "norm_eps"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in BOOL_FIELDS:
            object.__setattr__(self, name, bool(getattr(self, name)))
        if self.qkv_bias is not None:
            object.__setattr__(self, "qkv_bias", bool(self.qkv_bias))
        if self.n_kv_heads is not None:
            object.__setattr__(self, "n_kv_heads", int(self.n_kv_heads))
        if self.positions == "rotary":
            object.__setattr__(self, "rope_theta", float(self.rope_theta or DEFAULT_ROPE_THETA))

    def _architecture_problems(self, heads_ok: bool) -> list[str]:
        """What is wrong with the architecture fields (choices, biases, kv heads, rotary settings)."""
        problems = [f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                    for name, allowed in CHOICES.items() if not _is_choice(getattr(self, name), allowed)]
        problems += [f"{name} must be a bool, got {getattr(self, name)!r}" for name in BOOL_FIELDS
                     if not isinstance(getattr(self, name), (bool, np.bool_))]
        if self.qkv_bias is not None and not isinstance(self.qkv_bias, (bool, np.bool_)):
            problems.append(f"qkv_bias must be a bool or None (as attn_bias), got {self.qkv_bias!r}")
        kv = self.n_kv_heads
        if kv is not None and (not _is_int(kv) or kv <= 0):
            problems.append(f"n_kv_heads must be a positive integer or None (= n_heads), got {kv!r}")
        elif kv is not None and heads_ok and self.n_heads % kv != 0:
            problems.append(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({kv})")
        if self.positions == "learned" and self.rope_theta is not None:
            problems.append(f"rope_theta ({self.rope_theta!r}) is a rotary setting: use positions='rotary' or "
                            "leave rope_theta None")
        elif self.rope_theta is not None and (not _is_real(self.rope_theta) or self.rope_theta <= 0):
            problems.append(f"rope_theta must be a finite positive number or None (10000), got {self.rope_theta!r}")
        if self.positions == "rotary" and heads_ok and (self.d_model // self.n_heads) % 2:
            problems.append(f"rotary positions need an even head dim (d_model / n_heads), got "
                            f"{self.d_model // self.n_heads}")
        return problems

    def parameter_count(self, task: str = "lm") -> int:
        """Number of weights of the ``task`` model (``lm`` or ``classifier``), as in ``canonical_shapes``."""
        C, F, L = self.d_model, self.d_ff, self.n_layers
        norm = C * (2 if self.norm == "layer" else 1)
        qkv, up = self.qkv_width, self.fc_width
        block = (2 * norm + C * qkv + qkv * self.qkv_biased + C * C + C * self.attn_bias
                 + C * up + F * C + (up + C) * self.mlp_bias)
        count = (self.vocab_size + self.max_seq_len * (self.positions == "learned")) * C + L * block + norm
        if task == "classifier":
            return count + C * self.num_classes + self.num_classes * (self.pooling == "mean")
        return count + (0 if self.tie_embeddings else self.vocab_size * C)

    def memory_bytes(self, task: str = "lm") -> int:
        """Estimated fp32 bytes to train the model: weights, gradients and both AdamW moments (16 bytes per
        parameter), plus the activations of a forward pass over one ``max_seq_len`` sequence."""
        T, C, F, H = self.max_seq_len, self.d_model, self.d_ff, self.n_heads
        per_layer = 2 * H * T * T + T * (10 * C + 2 * F)  # attention scores and probabilities, hidden states
        outputs = 2 * T * (self.vocab_size if task == "lm" else self.num_classes)  # logits and their softmax
        return 16 * self.parameter_count(task) + 4 * (self.n_layers * per_layer + outputs + 2 * T * C)

    def check_memory(self, task: str = "lm") -> None:
        """``ValueError`` before anything is allocated when ``memory_bytes`` exceeds this machine's RAM."""
        needed, total = self.memory_bytes(task), total_memory_bytes()
        if total is not None and needed > total:
            raise ValueError(
                f"model too large for this machine: the {task} model of this Config has "
                f"{self.parameter_count(task):,} parameters and needs about {needed:,} bytes "
                f"({needed / 2**30:,.1f} GiB: weights, gradients and AdamW moments plus a forward of one "
                f"{self.max_seq_len}-token sequence), but this machine has {total:,} bytes "
                f"({total / 2**30:,.1f} GiB) of RAM; use a smaller vocab_size, d_model, n_layers or max_seq_len"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``n_kv_heads``, or ``n_heads`` (multi-head attention) when it is None."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def qkv_width(self) -> int:
        """Output width of the fused q, k, v projection: the query heads and twice the key/value heads."""
        return (self.n_heads + 2 * self.kv_heads) * self.head_dim

    @property
    def fc_width(self) -> int:
        """Output width of the MLP's first projection: ``d_ff``, twice that for SwiGLU (gate, then up)."""
        return self.d_ff * (2 if self.mlp == "swiglu" else 1)

    @property
    def qkv_biased(self) -> bool:
        """Whether the fused q, k, v projection has a bias: ``qkv_bias``, or ``attn_bias`` when it is None."""
        return self.attn_bias if self.qkv_bias is None else self.qkv_bias

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from a dict, rejecting unknown keys by name."""
        check_fields(cls, data)
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Config:
        return cls.from_json(Path(path).read_text())

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Config:
        """A named preset (see ``PRESETS``), optionally with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"vocab_size": 256, "max_seq_len": 64, "d_model": 64, "n_layers": 2, "n_heads": 4},
    "small": {"vocab_size": 8192, "max_seq_len": 256, "d_model": 256, "n_layers": 4, "n_heads": 4},
    "gpt2": {"vocab_size": 50257, "max_seq_len": 1024, "d_model": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-medium": {"vocab_size": 50257, "max_seq_len": 1024, "d_model": 1024, "n_layers": 24, "n_heads": 16},
}
LLAMA = {"norm": "rms", "mlp": "swiglu", "positions": "rotary", "attn_bias": False, "mlp_bias": False,
         "pooling": "last"}
PRESETS.update({
    # sized like tiny and small (d_ff as Llama's ~8/3 d_model, rounded), with 2:1 grouped-query attention
    "llama-tiny": {**PRESETS["tiny"], **LLAMA, "d_ff": 176, "n_kv_heads": 2},
    "llama-small": {**PRESETS["small"], **LLAMA, "d_ff": 688, "n_kv_heads": 2},
    # published shapes. Llama 3.2's llama3 rope scaling is not modelled: max_seq_len is its unscaled 8192
    "llama-3.2-1b": {**LLAMA, "vocab_size": 128256, "max_seq_len": 8192, "d_model": 2048, "n_layers": 16,
                     "n_heads": 32, "n_kv_heads": 8, "d_ff": 8192, "rope_theta": 500000.0},
    "qwen2.5-0.5b": {**LLAMA, "vocab_size": 151936, "max_seq_len": 32768, "d_model": 896, "n_layers": 24,
                     "n_heads": 14, "n_kv_heads": 2, "d_ff": 4864, "rope_theta": 1000000.0, "norm_eps": 1e-6,
                     "qkv_bias": True},
    "tinyllama-1.1b": {**LLAMA, "vocab_size": 32000, "max_seq_len": 2048, "d_model": 2048, "n_layers": 22,
                       "n_heads": 32, "n_kv_heads": 4, "d_ff": 5632, "tie_embeddings": False},
})


def _is_int(value: Any) -> bool:
    """True for Python and numpy integers, not bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_choice(value: Any, allowed: tuple[str, ...]) -> bool:
    """True when ``value`` is one of the ``allowed`` strings (a str, so unhashable values are refused too)."""
    return isinstance(value, str) and value in allowed


def _is_real(value: Any) -> bool:
    """True for finite Python and numpy real numbers, not bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def total_memory_bytes() -> int | None:
    """This machine's total RAM in bytes (``os.sysconf``, else ``/proc/meminfo``), or None where neither says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fields(cls: type, data: Mapping[str, Any]) -> None:
    """``ValueError`` naming the keys of ``data`` that are not fields of dataclass ``cls``, and the allowed ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; allowed: {sorted(known)}")
