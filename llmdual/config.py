"""Model configuration shared by both backends: one frozen dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Config:
    """Hyper-parameters of a GPT-2-style transformer (LM or classifier).

    ``d_ff`` defaults to ``4 * d_model``; ``num_classes`` is only used by the classifier.
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
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        problems = []
        for name in ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "d_ff", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems and self.d_model % self.n_heads != 0:
            problems.append(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.norm_eps, (int, float)) or not self.norm_eps > 0:
            problems.append(f"norm_eps must be a positive number, got {self.norm_eps!r}")
        if not isinstance(self.tie_embeddings, bool):
            problems.append(f"tie_embeddings must be a bool, got {self.tie_embeddings!r}")
        if problems:
            raise ValueError("invalid Config: " + "; ".join(problems))

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
    "tiny": dict(vocab_size=256, max_seq_len=64, d_model=64, n_layers=2, n_heads=4),
    "small": dict(vocab_size=8192, max_seq_len=256, d_model=256, n_layers=4, n_heads=4),
    "gpt2": dict(vocab_size=50257, max_seq_len=1024, d_model=768, n_layers=12, n_heads=12),
    "gpt2-medium": dict(vocab_size=50257, max_seq_len=1024, d_model=1024, n_layers=24, n_heads=16),
}
