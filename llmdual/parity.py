"""Parity between the PyTorch and Keras backends, as a library feature: run checks, get a report.

``python -m llmdual.parity --preset tiny`` prints the report as a table. Every check compares the two
backends on the same canonical weights and names the tolerance it was held to.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.api import build, forward
from llmdual.backend import load_backend
from llmdual.checkpoint import load, save
from llmdual.config import PRESETS, Config
from llmdual.weights import from_hf_gpt2, init_weights

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


def check_weights_identical(ctx: ParityContext) -> list[Check]:
    """Same seed -> bit-identical canonical weights in both backends."""
    wt, wk = (load_backend(b)._weights.get_weights(ctx.models[b]) for b in BACKENDS)
    differing = [n for n in wt if not np.array_equal(wt[n], wk[n])]
    max_abs = max(float(np.abs(wt[n] - wk[n]).max()) for n in wt)
    detail = f"{len(wt)} tensors" + (f"; differ: {differing[:5]}" if differing else "")
    return [Check("weights identical (same seed)", max_abs, 0.0 if not differing else max_abs, 0.0, not differing, detail)]


def check_forward(ctx: ParityContext) -> list[Check]:
    """Logits torch vs keras, without and with a padded attention mask."""
    ids, mask = ctx.inputs
    t, k = ctx.models["torch"], ctx.models["keras"]
    checks = [compare("logits", forward(t, ids), forward(k, ids), LOGITS_ATOL)]
    checks.append(compare("logits, padded mask", forward(t, ids, mask), forward(k, ids, mask), LOGITS_ATOL))
    return checks


def check_loss_and_grads(ctx: ParityContext) -> list[Check]:
    """Cross-entropy loss within LOSS_RTOL, and every canonical gradient within GRAD_RTOL of its scale."""
    ids, _ = ctx.inputs
    (lt, gt), (lk, gk) = (load_backend(b).loss_and_grads(ctx.models[b], ids, ctx.targets) for b in BACKENDS)
    rel = abs(lt - lk) / max(abs(lt), 1e-30)
    checks = [Check("loss", abs(lt - lk), rel, LOSS_RTOL, rel <= LOSS_RTOL, f"torch {lt:.7f} keras {lk:.7f}")]
    worst_name, worst_rel, worst_abs = "", 0.0, 0.0
    for name in gt:
        scale = max(float(np.abs(gt[name]).max()), 1e-30)
        diff = float(np.abs(gt[name] - gk[name]).max())
        if diff / scale >= worst_rel:
            worst_name, worst_rel, worst_abs = name, diff / scale, diff
    checks.append(
        Check("gradients (worst tensor, rel to its max)", worst_abs, worst_rel, GRAD_RTOL, worst_rel <= GRAD_RTOL,
              f"{len(gt)} tensors; worst {worst_name}")
    )
    return checks


def check_checkpoint_crossover(ctx: ParityContext) -> list[Check]:
    """Save in one backend, load in the other: same logits as the model that was saved."""
    ids, mask = ctx.inputs
    mask = mask if ctx.task == "classifier" else None
    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        for src, dst in (("torch", "keras"), ("keras", "torch")):
            path = save(ctx.models[src], Path(tmp) / f"{src}.safetensors")
            restored = load(path, backend=dst)
            checks.append(compare(f"save {src} -> load {dst}", forward(ctx.models[src], ids, mask),
                                  forward(restored, ids, mask), LOGITS_ATOL))
    return checks


def check_invariance(ctx: ParityContext) -> list[Check]:
    """LM: changing future tokens leaves earlier logits unchanged. Classifier: padding leaves the prediction unchanged."""
    ids, mask = ctx.inputs
    rng = np.random.default_rng(ctx.seed + 2)
    checks = []
    for backend in BACKENDS:
        model = ctx.models[backend]
        if ctx.task == "lm":
            cut = ids.shape[1] // 2
            changed = ids.copy()
            changed[:, cut:] = rng.integers(0, ctx.config.vocab_size, changed[:, cut:].shape)
            a, b = forward(model, ids)[:, :cut], forward(model, changed)[:, :cut]
            checks.append(compare(f"causal: future tokens ignored [{backend}]", a, b, LOGITS_ATOL))
        else:
            n = int(mask[-1].sum())
            alone = forward(model, ids[-1:, :n])
            padded_ids = ids[-1:].copy()
            padded_ids[:, n:] = rng.integers(0, ctx.config.vocab_size, padded_ids[:, n:].shape)
            padded = forward(model, padded_ids, mask[-1:])
            checks.append(compare(f"padding ignored [{backend}]", alone, padded, LOGITS_ATOL))
    return checks


def check_hf_gpt2(ctx: ParityContext) -> list[Check]:
    """A state dict in GPT-2's published names and Conv1D layout, through ``from_hf_gpt2``, gives equal logits."""
    if ctx.task != "lm":
        return []
    state = {("transformer." + n if n.startswith(("h.", "w", "ln_f")) else n): v
             for n, v in init_weights(ctx.config, "lm", ctx.seed + 3).items()}
    state["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, ctx.config.max_seq_len, ctx.config.max_seq_len)))
    state["lm_head.weight"] = state["transformer.wte.weight"]
    config, weights = from_hf_gpt2(state, {"n_head": ctx.config.n_heads, "layer_norm_epsilon": ctx.config.norm_eps})
    ids, _ = ctx.inputs
    t, k = (build(config, b, "lm", weights=weights) for b in BACKENDS)
    return [compare("from_hf_gpt2 state dict: logits", forward(t, ids), forward(k, ids), LOGITS_ATOL)]


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
    traces = [load_backend(b).intermediates(ctx.models[b], ids, mask) for b in BACKENDS]
    for name, a, b in zip(stage_names(ctx.config), *traces):
        diff = float(np.abs(a.astype(np.float64) - b).max())
        if not diff <= atol:
            return f"{name} (max abs diff {diff:.3e} > {atol:.0e})"
    return None


CHECKS: list[Callable[[ParityContext], list[Check]]] = [
    check_weights_identical,
    check_forward,
    check_loss_and_grads,
    check_checkpoint_crossover,
    check_invariance,
    check_hf_gpt2,
]


def all_checks() -> list[Callable[[ParityContext], list[Check]]]:
    """The model checks above, then training and generation (``llmdual.training_parity``, which builds on them)."""
    from llmdual.training_parity import CHECKS as TRAINING_CHECKS

    return CHECKS + TRAINING_CHECKS


def run(
    config: Config,
    task: str = "lm",
    seed: int = 0,
    checks: Sequence[Callable[[ParityContext], list[Check]]] | None = None,
) -> ParityReport:
    """Run parity checks (default: ``all_checks()``) for one config, task and seed; localise the first
    divergence if logits differ."""
    ctx = ParityContext(config, task, seed)
    report = ParityReport(config, task, seed)
    for check in all_checks() if checks is None else checks:
        report.checks.extend(check(ctx))
    if not all(c.passed for c in report.checks if c.name.startswith("logits")):
        report.divergence = first_divergence(ctx)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print parity tables for a preset (both tasks by default); exit 1 if any check fails."""
    parser = argparse.ArgumentParser(prog="python -m llmdual.parity", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--task", choices=["lm", "classifier", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checks", choices=["model", "all"], default="all",
                        help="model: weights, forward, gradients, checkpoints only; all: also training and generation")
    parser.add_argument("--json", type=Path, help="also write the reports to this JSON file")
    args = parser.parse_args(argv)
    config = Config.preset(args.preset)
    tasks = ["lm", "classifier"] if args.task == "both" else [args.task]
    checks = CHECKS if args.checks == "model" else all_checks()
    reports = [run(config, task, args.seed, checks) for task in tasks]
    for report in reports:
        print(report.table(), end="\n\n")
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in reports], indent=2))
    return 0 if all(r.passed for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
