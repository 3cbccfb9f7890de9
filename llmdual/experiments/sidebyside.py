"""Side-by-side experiments: the same model, weights, batches and recipe trained in each backend, then compared.

The examples are thin scripts over this module: the built-in corpus (the running Python's standard library)
and task, training both backends from one seed, evaluation, the overlaid loss curves as a PNG, and samples.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.api import build
from llmdual.contract import backends as registered
from llmdual.core.config import Config
from llmdual.core.io import atomic_write
from llmdual.evaluate import evaluate
from llmdual.training import History, TrainConfig, train

# Line colours (a main one and a paler one) and styles, one per backend in the order the runs come
PALETTE = [("tab:red", "tab:orange"), ("tab:blue", "tab:cyan"), ("tab:green", "tab:olive"), ("tab:purple", "tab:pink")]
STYLES = ["-", "--", "-.", ":"]


@dataclass
class Run:
    """One backend's result: the trained model, its history, validation metrics and wall time."""

    backend: str
    model: Any
    history: History
    metrics: dict[str, float]
    seconds: float






def train_side_by_side(config: Config, task: str, data: Any, train_config: TrainConfig,
                       backends: Sequence[str] | None = None, eval_batch_size: int = 32) -> dict[str, Run]:
    """Build each backend's model (default: every backend that trains) from ``train_config.seed`` (bit-identical start), train it on the same
    batches with the same recipe, and evaluate it on the validation split."""
    runs = {}
    for backend in registered("training") if backends is None else backends:
        model = build(config, backend, task, seed=train_config.seed)
        start = time.perf_counter()
        history = train(model, data, train_config)
        seconds = time.perf_counter() - start
        metrics = evaluate(model, data, "val", eval_batch_size, max_batches=train_config.eval_batches)
        runs[backend] = Run(backend, model, history, metrics, seconds)
    return runs


def plot_curves(runs: dict[str, Run], path: str | Path, title: str, baseline: float | None = None) -> Path:
    """Training (thin) and validation (markers) loss of every run on one chart, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (backend, run) in enumerate(runs.items()):
        draw_history(ax, run.history, STYLES[i % len(STYLES)], PALETTE[i % len(PALETTE)][0], backend)
    if baseline is not None:
        ax.axhline(baseline, color="gray", lw=1, ls=":", label=f"unigram baseline ({baseline:.2f})")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy (nats)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, path)


def draw_history(ax: Any, history: History, style: str, color: str, label: str) -> None:
    """One run's training loss (a thin line) and validation loss (hollow markers) on ``ax``."""
    ax.plot(history.step, history.loss, style, color=color, lw=1.1, alpha=0.85, label=f"{label} train")
    if history.val_loss:
        ax.plot(history.val_step, history.val_loss, "o", color=color, ms=5, mfc="none", label=f"{label} val")


def save_png(fig: Any, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as a PNG (atomically) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def max_curve_gap(runs: dict[str, Run]) -> float:
    """Largest absolute difference (nats) between the backends' per-step training losses. Absolute, because a
    classifier's loss approaches 0, where a relative gap means nothing."""
    losses = [np.asarray(run.history.loss, np.float64) for run in runs.values()]
    return float(max(np.abs(a - losses[0]).max() for a in losses))
