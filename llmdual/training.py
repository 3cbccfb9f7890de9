"""Training shared by both backends: the config, the warmup+cosine schedule, batches, history and checkpoints.

Framework-free: each backend's ``train`` module runs the steps (PyTorch: an explicit loop; Keras: ``fit`` with a
custom ``train_step``) and hands every finished step to ``Monitor``, which records it, evaluates, checkpoints
and draws the progress bar the same way for both.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from llmdual.api import set_weights
from llmdual.backend import backend_of, load_backend
from llmdual.checkpoint import read, save
from llmdual.evaluate import mean_loss
from llmdual.files import atomic_write

PRECISIONS = ("fp32", "bf16", "fp16")
Batch = tuple[np.ndarray, ...]
BatchFn = Callable[[int], Batch]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation hyper-parameters, identical in meaning for both backends.

    ``batch_size`` rows per optimizer step are split into ``grad_accum`` equal micro-batches. AdamW decays
    every tensor with ``ndim >= 2`` (matrices and embeddings, as nanoGPT), never biases or norm scales.
    The learning rate warms up linearly over ``warmup_steps``, then follows a cosine down to ``min_lr`` at
    the last step. ``grad_clip`` is the max global gradient norm (0: no clipping). ``eval_interval`` 0
    evaluates only at the end; ``checkpoint_interval`` 0 checkpoints only at the end (if ``checkpoint_dir``).
    ``jit_compile`` XLA-compiles the Keras train step (TensorFlow backend); PyTorch ignores it.
    """

    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 10
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 0
    eval_batches: int = 8
    seed: int = 0
    precision: str = "fp32"
    checkpoint_dir: str | None = None
    checkpoint_interval: int = 0
    jit_compile: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name, low in (("steps", 1), ("batch_size", 1), ("grad_accum", 1), ("warmup_steps", 0),
                          ("eval_interval", 0), ("eval_batches", 0), ("seed", 0), ("checkpoint_interval", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                problems.append(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("lr", "min_lr", "eps", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                problems.append(f"{name} must be a number >= 0, got {value!r}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                problems.append(f"{name} must be in [0, 1), got {value!r}")
        if not problems and self.batch_size % self.grad_accum:
            problems.append(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")
        if not problems and self.min_lr > self.lr:
            problems.append(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def lr_at(step: Any, cfg: TrainConfig, xp: Any = np) -> Any:
    """Learning rate at 0-based ``step``: linear warmup, then cosine to ``min_lr`` at the last step.

    ``xp`` is the array namespace (numpy, or ``keras.ops`` inside a Keras ``LearningRateSchedule``), so both
    backends evaluate this one formula.
    """
    warm = cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    ratio = xp.clip((step - cfg.warmup_steps) / max(1, cfg.steps - 1 - cfg.warmup_steps), 0.0, 1.0)
    decayed = cfg.min_lr + 0.5 * (1.0 + xp.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)
    return xp.where(step < cfg.warmup_steps, warm, decayed)


@dataclass
class History:
    """Per-step loss, learning rate, global gradient norm (before clipping) and throughput, plus evaluations."""

    backend: str
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        return cls(**data)


def batch_source(data: Any, cfg: TrainConfig) -> tuple[BatchFn, list[Batch]]:
    """The training ``get_batch(step)`` and the validation batches for ``data``.

    ``data`` is an ``LMDataset``/``ClassificationDataset`` (train split by step, ``eval_batches`` validation
    batches) or a callable ``get_batch(step) -> tuple of numpy arrays`` (no validation).
    """
    if hasattr(data, "get_batch"):
        val = [data.get_batch("val", cfg.batch_size, i) for i in range(cfg.eval_batches)]
        return (lambda step: data.get_batch("train", cfg.batch_size, step)), val
    if callable(data):
        return data, []
    raise TypeError(f"data must be an LMDataset, a ClassificationDataset or a callable get_batch(step), "
                    f"got {type(data).__name__}")


def check_batch(batch: Batch, task: str, cfg: TrainConfig) -> Batch:
    """Validate one training batch's structure: LM ``(x, y)``, classifier ``(ids, mask, labels)``."""
    arity = 2 if task == "lm" else 3
    if not isinstance(batch, tuple) or len(batch) != arity:
        raise ValueError(f"a {task} batch must be a tuple of {arity} numpy arrays "
                         f"({'(x, y)' if task == 'lm' else '(ids, mask, labels)'}), got {type(batch).__name__}")
    batch = tuple(np.asarray(a, dtype=np.int64) for a in batch)
    if len(batch[0]) != cfg.batch_size:
        raise ValueError(f"batch has {len(batch[0])} rows, but TrainConfig.batch_size is {cfg.batch_size}")
    return batch


def micro_weights(targets: np.ndarray, grad_accum: int) -> np.ndarray:
    """Each micro-batch's share of the batch's counted targets (not -100), so accumulated gradients equal the
    full batch's mean-loss gradient even when micro-batches count different numbers of targets."""
    counts = (targets.reshape(grad_accum, -1) != -100).sum(axis=1).astype(np.float64)
    return (counts / max(counts.sum(), 1.0)).astype(np.float32)


def train(model: Any, data: Any, cfg: TrainConfig, resume: str | Path | None = None) -> History:
    """Train ``model`` (either backend) on ``data`` with ``cfg``; ``resume`` names a checkpoint (its path
    prefix, e.g. ``runs/ckpt/step-000010``, or a folder for its latest) to continue from."""
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be an llmdual.TrainConfig, got {type(cfg).__name__}")
    backend = backend_of(model)
    load_backend(backend)
    get_batch, val = batch_source(data, cfg)
    module = importlib.import_module(f"llmdual.{backend}_backend.train")
    return module.train(model, get_batch, cfg, val, resume)


# Checkpoints: ``{dir}/step-NNNNNN.safetensors`` (``llmdual.save``: config and weights), the sibling
# ``.optim.safetensors`` (AdamW moments by canonical name and layout, so either backend can resume either's
# run) and ``.json`` (step, train config, history), written last: a checkpoint exists once its json does.


def checkpoint_prefix(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:06d}"


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The prefix of the newest complete checkpoint in ``folder``, or None."""
    found = sorted(Path(folder).glob("step-*.json"))
    return found[-1].with_suffix("") if found else None


def save_checkpoint(model: Any, moments: dict[str, np.ndarray], step: int, cfg: TrainConfig,
                    history: History) -> Path:
    """Write weights, optimizer moments and the run state after ``step`` optimizer steps; return the prefix."""
    prefix = checkpoint_prefix(cfg.checkpoint_dir, step)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    save(model, prefix.with_suffix(".safetensors"))
    atomic_write(prefix.with_suffix(".optim.safetensors"), lambda tmp: save_file(moments, tmp))
    state = {"step": step, "train_config": cfg.to_dict(), "history": history.to_dict()}
    atomic_write(prefix.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(state, indent=1)))
    return prefix


def restore_checkpoint(model: Any, resume: str | Path) -> tuple[int, dict[str, np.ndarray], History]:
    """Load a checkpoint's weights into ``model``; return its step, optimizer moments and history."""
    prefix = Path(resume)
    if prefix.is_dir():
        latest = latest_checkpoint(prefix)
        if latest is None:
            raise FileNotFoundError(f"no checkpoint (step-*.json) in {prefix}")
        prefix = latest
    prefix = prefix.with_suffix("") if prefix.suffix == ".json" else prefix
    if not prefix.with_suffix(".json").is_file():
        raise FileNotFoundError(f"no checkpoint at {prefix} (expected {prefix.with_suffix('.json')})")
    state = json.loads(prefix.with_suffix(".json").read_text())
    config, task, weights = read(prefix.with_suffix(".safetensors"))
    if config != model.config or task != model.task:
        raise ValueError(f"checkpoint {prefix} holds a {task} model of {config}, not this {model.task} model "
                         f"of {model.config}")
    set_weights(model, weights)
    history = History.from_dict({**state["history"], "backend": backend_of(model)})
    return int(state["step"]), load_file(str(prefix.with_suffix(".optim.safetensors"))), history


class Monitor:
    """Bookkeeping after each optimizer step, shared by both loops: history, progress bar, evaluation and
    checkpoints. ``moments()`` returns the optimizer state to checkpoint (canonical names)."""

    def __init__(self, model: Any, cfg: TrainConfig, val: Sequence[Batch], history: History, start: int,
                 moments: Callable[[], dict[str, np.ndarray]]):
        self.model, self.cfg, self.val, self.history, self.moments = model, cfg, val, history, moments
        self.bar = tqdm(total=cfg.steps, initial=start, desc=f"train {history.backend}", dynamic_ncols=True,
                        disable=not cfg.progress or start >= cfg.steps, leave=False)
        self._t0 = time.perf_counter()

    def step_begin(self) -> None:
        self._t0 = time.perf_counter()

    def _due(self, step: int, interval: int) -> bool:
        """Whether finished 0-based ``step`` is the last one or a multiple of ``interval`` (0: never)."""
        done = step + 1
        return done == self.cfg.steps or bool(interval and done % interval == 0)

    def evaluating(self, step: int) -> bool:
        """Whether ``step_end(step, ...)`` evaluates."""
        return bool(self.val) and self._due(step, self.cfg.eval_interval)

    def checkpointing(self, step: int) -> bool:
        """Whether ``step_end(step, ...)`` writes a checkpoint."""
        return bool(self.cfg.checkpoint_dir) and self._due(step, self.cfg.checkpoint_interval)

    def step_end(self, step: int, loss: float, lr: float, grad_norm: float, tokens: int) -> None:
        """Record finished 0-based ``step``, then evaluate and checkpoint when due."""
        h, cfg, done = self.history, self.cfg, step + 1
        seconds = max(time.perf_counter() - self._t0, 1e-9)
        for name, value in (("step", step), ("loss", loss), ("lr", lr), ("grad_norm", grad_norm),
                            ("tokens_per_s", tokens / seconds)):
            getattr(h, name).append(value)
        if not math.isfinite(loss):
            self.bar.close()
            raise FloatingPointError(f"loss became {loss} at step {step} (lr {lr:.3g}); lower the learning rate")
        if self.evaluating(step):
            h.val_step.append(step)
            h.val_loss.append(mean_loss(self.model, self.val))
        if self.checkpointing(step):
            save_checkpoint(self.model, self.moments(), done, cfg, h)
        postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{tokens / seconds:,.0f}"}
        if h.val_loss:
            postfix["val"] = f"{h.val_loss[-1]:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)
        if done == cfg.steps:
            self.bar.close()
