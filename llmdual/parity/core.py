"""Parity's building blocks: the tolerances, one ``Check`` per comparison, the ``ParityContext`` every check
reads, the report, and localisation of the first diverging stage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from llmdual.api import build
from llmdual.core.config import Config
from llmdual.contract import backend

# Tolerances, fp32 on CPU. Different kernels (oneDNN matmuls, fused vs. composed softmax and layer norm)
# round differently, so values agree to a few ulps of their magnitude, never bit for bit.
LOGITS_ATOL = 1e-5

LOSS_RTOL = 1e-6

GRAD_RTOL = 1e-4  # max |g_torch - g_keras| <= GRAD_RTOL * max |g_torch|, per tensor

STAGE_ATOL = 1e-5  # per-stage activation tolerance when localising a divergence

BACKENDS = ("torch", "keras")


@dataclass
class Check:
    """One comparison: the largest absolute and relative differences found, and the bound they were held to."""

    name: str
    max_abs: float
    max_rel: float
    tolerance: float
    passed: bool
    detail: str = ""


@dataclass
class ParityContext:
    """What every check needs: the config, seed, task, one model per backend and shared inputs."""

    config: Config
    task: str
    seed: int = 0
    batch: int = 3
    seq_len: int | None = None

    @cached_property
    def models(self) -> dict[str, Any]:
        return {b: build(self.config, b, self.task, self.seed) for b in BACKENDS}

    @cached_property
    def inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """Random ids (B, T) and a right-padded attention mask whose first row is unpadded."""
        rng = np.random.default_rng(self.seed)
        T = self.seq_len or min(self.config.max_seq_len, 32)
        ids = rng.integers(0, self.config.vocab_size, (self.batch, T), dtype=np.int64)
        lengths = np.linspace(T, max(1, T // 3), self.batch).astype(int)
        mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
        return ids, mask

    @cached_property
    def targets(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 1)
        ids, _ = self.inputs
        if self.task == "lm":
            return rng.integers(0, self.config.vocab_size, ids.shape, dtype=np.int64)
        return rng.integers(0, self.config.num_classes, ids.shape[:1], dtype=np.int64)


def compare(name: str, a: np.ndarray, b: np.ndarray, atol: float, detail: str = "") -> Check:
    """Check that ``b`` is within ``atol`` of the reference ``a`` everywhere."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return Check(name, float("inf"), float("inf"), atol, False, f"shapes differ: {a.shape} vs {b.shape}")
    diff = np.abs(a - b)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / max(float(np.abs(a).max()) if a.size else 0.0, 1e-30)
    return Check(name, max_abs, max_rel, atol, bool(np.isfinite(max_abs) and max_abs <= atol), detail)


@dataclass
class ParityReport:
    """All checks for one config, seed and task, plus the first diverging stage if logits differ."""

    config: Config
    task: str
    seed: int
    checks: list[Check] = field(default_factory=list)
    divergence: str | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "task": self.task,
            "seed": self.seed,
            "passed": self.passed,
            "divergence": self.divergence,
            "checks": [asdict(c) for c in self.checks],
        }

    def table(self) -> str:
        """Plain-text table, one row per check."""
        width = max([44] + [len(c.name) for c in self.checks])
        head = f"{'check':<{width}} {'max abs':>11} {'max rel':>11} {'tolerance':>11}  result"
        lines = [f"parity: task={self.task} seed={self.seed} {self.config}", head, "-" * len(head)]
        for c in self.checks:
            verdict = "ok" if c.passed else "FAIL"
            lines.append(f"{c.name:<{width}} {c.max_abs:>11.3e} {c.max_rel:>11.3e} {c.tolerance:>11.1e}  {verdict} {c.detail}")
        if self.divergence:
            lines.append(f"first divergence: {self.divergence}")
        lines.append(f"{'PASSED' if self.passed else 'FAILED'}: {sum(c.passed for c in self.checks)}/{len(self.checks)} checks")
        return "\n".join(lines)


def stage_names(config: Config) -> list[str]:
    """Names of the traced activations, in order."""
    names = ["embeddings"]
    for i in range(config.n_layers):
        names += [f"block {i} attention output", f"block {i} MLP output"]
    return names + ["final norm"]


def first_divergence(ctx: ParityContext, atol: float = STAGE_ATOL) -> str | None:
    """The first traced stage where the backends differ beyond ``atol``, or None if none does."""
    ids, mask = ctx.inputs
    mask = mask if ctx.task == "classifier" else None
    traces = [backend(b).intermediates(ctx.models[b], ids, mask) for b in BACKENDS]
    for name, a, b in zip(stage_names(ctx.config), *traces):
        diff = float(np.abs(a.astype(np.float64) - b).max())
        if not diff <= atol:
            return f"{name} (max abs diff {diff:.3e} > {atol:.0e})"
    return None
