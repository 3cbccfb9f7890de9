"""Parity's building blocks: the tolerances, the backends each check compares (every pair offering what it checks,
and each against the float64 reference), one ``Check`` per comparison, the ``ParityContext`` every check reads, the
report, and localisation of the first diverging stage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from itertools import combinations
from typing import Any

import numpy as np

from llmdual.api import build
from llmdual.contract import backend, backends
from llmdual.core.config import Config

# Tolerances, fp32 on CPU. Different kernels (oneDNN matmuls, fused vs. composed softmax and layer norm)
# round differently, so values agree to a few ulps of their magnitude, never bit for bit.
LOGITS_ATOL = 1e-5

LOSS_RTOL = 1e-6

GRAD_RTOL = 1e-4  # max |g_a - g_b| <= GRAD_RTOL * max |g_a|, per tensor

STAGE_ATOL = 1e-5  # per-stage activation tolerance when localising a divergence

# A backend's fp32 logits against the float64 reference's: the same bound as between two backends, since a pair's
# difference is made of each side's own rounding error against the exact values, which the reference computes.
REFERENCE_ATOL = LOGITS_ATOL

REFERENCE_GROUP = "against the float64 reference"


def references() -> list[str]:
    """The float64 reference backends (capability ``reference``): each is compared with every other backend in its
    own group of rows, never as one of a pair."""
    return backends("reference")


def peers(capability: str) -> list[str]:
    """The backends offering ``capability`` that parity compares with each other: all but the float64 reference."""
    reference = references()
    return [name for name in backends(capability) if name not in reference]


def pairs(capability: str) -> list[tuple[str, str]]:
    """Every pair of peers offering ``capability``, in registry order."""
    return list(combinations(peers(capability), 2))


def label(name: str) -> str:
    """How a row names a backend: a float64 reference as ``fp64`` (with its name, should there be several)."""
    reference = references()
    if name not in reference:
        return name
    return "fp64" if len(reference) == 1 else f"fp64 {name}"


@dataclass
class Check:
    """One comparison: the largest absolute and relative differences found, and the bound they were held to;
    ``reference``: a backend against the float64 reference rather than two backends against each other."""

    name: str
    max_abs: float
    max_rel: float
    tolerance: float
    passed: bool
    detail: str = ""
    reference: bool = False


@dataclass
class ParityContext:
    """What every check needs: the config, seed, task, one model per backend offering ``forward`` (the float64
    reference included) and shared inputs."""

    config: Config
    task: str
    seed: int = 0
    batch: int = 3
    seq_len: int | None = None

    @cached_property
    def models(self) -> dict[str, Any]:
        return {b: build(self.config, b, self.task, self.seed) for b in backends("forward")}

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


def compare(name: str, a: np.ndarray, b: np.ndarray, atol: float, detail: str = "", reference: bool = False) -> Check:
    """Check that ``b`` is within ``atol`` of ``a`` everywhere (relative figures are to ``a``'s scale)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return Check(name, float("inf"), float("inf"), atol, False, f"shapes differ: {a.shape} vs {b.shape}",
                     reference)
    diff = np.abs(a - b)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / max(float(np.abs(a).max()) if a.size else 0.0, 1e-30)
    return Check(name, max_abs, max_rel, atol, bool(np.isfinite(max_abs) and max_abs <= atol), detail, reference)


@dataclass
class ParityReport:
    """All checks for one config, seed and task, the rows against the float64 reference apart, plus the first
    diverging stage of each pair (and of each backend against the reference) if logits differ."""

    config: Config
    task: str
    seed: int
    checks: list[Check] = field(default_factory=list)
    divergence: list[str] = field(default_factory=list)
    reference_divergence: list[str] = field(default_factory=list)

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
            "checks": [asdict(c) for c in self.checks if not c.reference],
            "reference": {
                "group": REFERENCE_GROUP,
                "backends": references(),
                "divergence": self.reference_divergence,
                "checks": [asdict(c) for c in self.checks if c.reference],
            },
        }

    def table(self) -> str:
        """Plain-text table, one row per check: the backends' pairs, then the rows against the float64 reference."""
        width = max([44] + [len(c.name) for c in self.checks])
        head = f"{'check':<{width}} {'max abs':>11} {'max rel':>11} {'tolerance':>11}  result"
        lines = [f"parity: task={self.task} seed={self.seed} {self.config}", head, "-" * len(head)]

        def rows(checks: list[Check], divergence: list[str]) -> None:
            for c in checks:
                verdict = "ok" if c.passed else "FAIL"
                lines.append(f"{c.name:<{width}} {c.max_abs:>11.3e} {c.max_rel:>11.3e} {c.tolerance:>11.1e}  "
                             f"{verdict} {c.detail}")
            lines.extend(f"first divergence: {d}" for d in divergence)

        rows([c for c in self.checks if not c.reference], self.divergence)
        against = [c for c in self.checks if c.reference]
        if against or self.reference_divergence:
            lines.append(f"-- {REFERENCE_GROUP} ({', '.join(references())}, float64) --")
            rows(against, self.reference_divergence)
        elif not references():
            lines.append(f"-- {REFERENCE_GROUP}: none checked, no backend offers 'reference' --")
        passed = sum(c.passed for c in self.checks)
        lines.append(f"{'PASSED' if self.passed else 'FAILED'}: {passed}/{len(self.checks)} checks")
        return "\n".join(lines)


def stage_names(config: Config) -> list[str]:
    """Names of the traced activations, in order."""
    names = ["embeddings"]
    for i in range(config.n_layers):
        names += [f"block {i} attention output", f"block {i} MLP output"]
    return names + ["final norm"]


def traces(ctx: ParityContext, names: list[str] | tuple[str, ...]) -> dict[str, list[np.ndarray]]:
    """Each named backend's traced activations on the context's inputs (the mask for the classifier only)."""
    ids, mask = ctx.inputs
    mask = mask if ctx.task == "classifier" else None
    return {b: backend(b).intermediates(ctx.models[b], ids, mask) for b in names}


def diverging_stage(config: Config, a: list[np.ndarray], b: list[np.ndarray], atol: float) -> str | None:
    """The first stage where traces ``a`` and ``b`` differ beyond ``atol``, with the difference, or None."""
    for name, x, y in zip(stage_names(config), a, b):
        diff = float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max())
        if not diff <= atol:
            return f"{name} (max abs diff {diff:.3e} > {atol:.0e})"
    return None


def first_divergence(ctx: ParityContext, a: str, b: str, atol: float = STAGE_ATOL) -> str | None:
    """The first traced stage where backends ``a`` and ``b`` differ beyond ``atol``, naming the pair
    ("torch vs keras: block 0 MLP output (...)"), or None if none does."""
    trace = traces(ctx, (a, b))
    stage = diverging_stage(ctx.config, trace[a], trace[b], atol)
    return None if stage is None else f"{label(a)} vs {label(b)}: {stage}"


def localise(ctx: ParityContext, report: ParityReport, atol: float = STAGE_ATOL) -> None:
    """If a logits row failed, record the first diverging stage of every pair of backends and of every backend
    against the float64 reference (the pairs that never diverge are left out)."""
    if all(c.passed for c in report.checks if c.name.startswith("logits")):
        return
    reference = references()
    others = [b for b in ctx.models if b not in reference]
    trace = traces(ctx, list(ctx.models))
    for a, b in combinations(others, 2):
        stage = diverging_stage(ctx.config, trace[a], trace[b], atol)
        if stage is not None:
            report.divergence.append(f"{label(a)} vs {label(b)}: {stage}")
    for r in [b for b in ctx.models if b in reference]:
        for b in others:
            stage = diverging_stage(ctx.config, trace[r], trace[b], atol)
            if stage is not None:
                report.reference_divergence.append(f"{label(b)} vs {label(r)}: {stage}")
