"""The plain-data side of LoRA: which projections take adapters, the ``LoraSpec`` (rank, alpha, targets) with its
canonical adapter names and shapes, and the shared numpy initializer; ``llmdual.lora`` adds them to models.

An adapter on projection ``W`` (``[in, out]``) is ``lora_A`` (``[in, r]``) and ``lora_B`` (``[r, out]``), named
after it (``h.0.attn.c_attn.lora_A``); the layer computes ``x @ W + b + (alpha / r) * x @ A @ B``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from llmdual.core.config import Config

# Projections that take adapters, in canonical order; bare names resolve through ALIASES.
TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
# A bare ``c_proj`` is ambiguous: it means the attention output projection, as in the canonical name
# ``attn.c_proj`` it abbreviates; the MLP's is always written ``mlp.c_proj``.
ALIASES = {"c_attn": "attn.c_attn", "c_proj": "attn.c_proj", "c_fc": "mlp.c_fc"}
INIT_B = ("zeros", "normal")
LORA_FORMAT = "llmdual-lora/1"


@dataclass(frozen=True)
class LoraSpec:
    """Rank, alpha and the (canonical, ordered) target projections of a model's adapters."""

    rank: int
    alpha: float
    targets: tuple[str, ...]

    @property
    def scale(self) -> float:
        """The factor on the low-rank update: ``alpha / rank``."""
        return self.alpha / self.rank

    def shapes(self, config: Config) -> dict[str, tuple[int, int]]:
        """Every adapter's canonical name mapped to its shape, layer by layer in target order."""
        shapes = {}
        for i in range(config.n_layers):
            for target in self.targets:
                n_in, n_out = projection_shape(config, target)
                shapes[f"h.{i}.{target}.lora_A"] = (n_in, self.rank)
                shapes[f"h.{i}.{target}.lora_B"] = (self.rank, n_out)
        return shapes

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoraSpec:
        fields = json.loads(text)
        return cls(int(fields["rank"]), float(fields["alpha"]), tuple(fields["targets"]))


def projection_shape(config: Config, target: str) -> tuple[int, int]:
    """``(in, out)`` of a target projection."""
    C, F = config.d_model, config.d_ff
    return {"attn.c_attn": (C, config.qkv_width), "attn.c_proj": (C, C), "mlp.c_fc": (C, config.fc_width),
            "mlp.c_proj": (F, C)}[target]


def resolve_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    """Canonical target names in canonical order; ``ValueError`` naming unknown ones and what is allowed."""
    names = [targets] if isinstance(targets, str) else list(targets)
    unknown = [t for t in names if ALIASES.get(t, t) not in TARGETS]
    if unknown or not names:
        allowed = ", ".join([*TARGETS, *(f"{a} (= {t})" for a, t in ALIASES.items())])
        raise ValueError(f"unknown LoRA target(s) {unknown or names}; allowed: {allowed}")
    return tuple(t for t in TARGETS if t in {ALIASES.get(n, n) for n in names})


def lora_spec(config: Config, rank: int, alpha: float, targets: str | Iterable[str]) -> LoraSpec:
    """A validated ``LoraSpec``: ``ValueError`` for a rank outside ``1 .. min(in, out)`` of the targets, a
    non-positive alpha or an unknown target."""
    targets = resolve_targets(targets)
    limit = min(min(projection_shape(config, t)) for t in targets)
    if not isinstance(rank, numbers.Integral) or isinstance(rank, bool) or not 1 <= rank <= limit:
        raise ValueError(f"LoRA rank must be an integer in 1 .. {limit} (the smallest side of {list(targets)}), "
                         f"got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < math.inf:
        raise ValueError(f"LoRA alpha must be a finite positive number, got {alpha!r}")
    return LoraSpec(int(rank), float(alpha), targets)


def init_lora(config: Config, spec: LoraSpec, seed: int = 0, init_b: str = "zeros") -> dict[str, np.ndarray]:
    """Adapters from one seeded numpy generator: A uniform in +-1/sqrt(in) (PEFT's default), B zeros (the model
    starts unchanged) or, with ``init_b="normal"``, normal(0, 0.02)."""
    if init_b not in INIT_B:
        raise ValueError(f"unknown init_b {init_b!r}; choose one of {list(INIT_B)}")
    rng = np.random.default_rng(seed)
    adapters = {}
    for name, shape in spec.shapes(config).items():
        if name.endswith("lora_A"):
            bound = 1.0 / math.sqrt(shape[0])
            adapters[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
        elif init_b == "normal":
            adapters[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        else:
            adapters[name] = np.zeros(shape, np.float32)
    return adapters
