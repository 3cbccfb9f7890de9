"""Model configuration shared by both backends: one frozen dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INT_FIELDS = ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "d_ff", "num_classes")


@dataclass(frozen=True)
class Config:
    """Hyper-parameters of a GPT-2-style transformer (LM or classifier).

    ``d_ff`` defaults to ``4 * d_model``; ``num_classes`` is only used by the classifier. Integer fields
    accept numpy integers (stored as ``int``), never bools; float fields must be finite.
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
        if not _is_real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1) (a finite number), got {self.dropout!r}")
        if not _is_real(self.norm_eps) or not 0 < self.norm_eps < math.inf:
            problems.append(f"norm_eps must be a finite positive number, got {self.norm_eps!r}")
        if not isinstance(self.tie_embeddings, (bool, np.bool_)):
            problems.append(f"tie_embeddings must be a bool, got {self.tie_embeddings!r}")
        if problems:
            raise ValueError("invalid Config: " + "; ".join(problems))
        for name in ("dropout", "norm_eps"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "tie_embeddings", bool(self.tie_embeddings))

    def parameter_count(self, task: str = "lm") -> int:
        """Number of weights of the ``task`` model (``lm`` or ``classifier``), as in ``canonical_shapes``."""
        C, F, L = self.d_model, self.d_ff, self.n_layers
        block = 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (C * F + F) + (F * C + C)
        count = (self.vocab_size + self.max_seq_len) * C + L * block + 2 * C
        if task == "classifier":
            return count + C * self.num_classes + self.num_classes
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

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Config fields {unknown}; allowed: {sorted(known)}")
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


def _is_int(value: Any) -> bool:
    """True for Python and numpy integers, not bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


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
