"""The training recipe, framework-free: TrainConfig, the warmup+cosine schedule, batch checks and the per-step
History that both backends' trainers share (micro-batch weights: ``llmdual.core.shard.shard_weights``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmdual.core.config import Config
from llmdual.core.validate import check_training_batch

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
    evaluates only at the end. With a ``checkpoint_dir`` the run state (model file, optimizer state, history;
    see ``llmdual.training``) is saved there every ``checkpoint_interval`` steps (0: only at the end).
    ``jit_compile`` XLA-compiles the Keras train step (TensorFlow backend); PyTorch ignores it.
    ``data_parallel`` ranks share every step (``llmdual.core.shard``): each takes an equal shard of every
    micro-batch, so ``batch_size`` stays the global batch and must divide by ``grad_accum * data_parallel``.
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
    data_parallel: int = 1

    def __post_init__(self) -> None:
        problems = []
        for name, low in (("steps", 1), ("batch_size", 1), ("grad_accum", 1), ("warmup_steps", 0),
                          ("eval_interval", 0), ("eval_batches", 0), ("seed", 0), ("checkpoint_interval", 0),
                          ("data_parallel", 1)):
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
        if not problems and shard_problem(self.batch_size, self.grad_accum, self.data_parallel):
            problems.append(shard_problem(self.batch_size, self.grad_accum, self.data_parallel))
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


def check_batch(batch: Batch, task: str, cfg: TrainConfig, config: Config | None = None) -> Batch:
    """Validate one training batch, LM ``(x, y)`` or classifier ``(ids, mask, labels)``, with
    ``llmdual.core.validate`` (id and target ranges too when ``config`` is given); return it as int64 arrays."""
    arity = 2 if task == "lm" else 3
    if not isinstance(batch, tuple) or len(batch) != arity:
        raise ValueError(f"a {task} batch must be a tuple of {arity} numpy arrays "
                         f"({'(x, y)' if task == 'lm' else '(ids, mask, labels)'}), got {type(batch).__name__}")
    batch = tuple(np.asarray(a) for a in batch)
    if len(batch[0]) != cfg.batch_size:
        raise ValueError(f"batch has {len(batch[0])} rows, but TrainConfig.batch_size is {cfg.batch_size}")
    ids, *mask, targets = batch
    check_training_batch(ids, targets, task, config, mask[0] if mask else None, cfg.grad_accum)
    return tuple(a.astype(np.int64) for a in batch)


def shard_problem(batch_size: int, grad_accum: int, data_parallel: int) -> str | None:
    """Why ``batch_size`` rows cannot split into ``grad_accum`` micro-batches of ``data_parallel`` equal shards each
    (every rank takes an equal share of every micro-batch), or None when they can."""
    if batch_size % (grad_accum * data_parallel):
        return (f"batch_size ({batch_size}) must be divisible by grad_accum x data_parallel ({grad_accum} x "
                f"{data_parallel}): each rank takes an equal share of every micro-batch")
    return None
