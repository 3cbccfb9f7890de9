"""Training driver shared by both backends: ``train``, the ``Monitor`` every loop reports to, and the run state
that either backend can resume from.

A run state is one step of a training run saved in ``TrainConfig.checkpoint_dir``: ``step-NNNNNN.safetensors``
(a model file, as ``llmdual.save`` writes; a LoRA model's base weights), ``.lora.safetensors`` (a LoRA model's
adapters, as ``llmdual.save_lora`` writes), ``.optim.safetensors`` (the optimizer state: AdamW moments of the
trained weights) and ``.json`` (step, recipe, history). Each backend's trainer (``contract.trainer``) runs the
steps (PyTorch: an explicit loop; Keras: ``fit`` with a custom ``train_step``) and hands every finished step to
``Monitor``, which records it, evaluates, saves the run state and draws the progress bar the same way for both.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from llmdual.api import get_weights, read_model, refuse_quantized, save, set_weights
from llmdual.contract import backend_name, backend_of
from llmdual.core.config import Config
from llmdual.core.io import atomic_write, read_optimizer_state, write_model_file, write_optimizer_state
from llmdual.core.recipe import Batch, BatchFn, History, TrainConfig
from llmdual.core.weights import canonical_shapes, trainable_shapes
from llmdual.evaluate import mean_loss
from llmdual.lora import check_compatible, describe, read_lora, save_lora

if TYPE_CHECKING:
    from llmdual.core.lora_spec import LoraSpec


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


def train(model: Any, data: Any, cfg: TrainConfig, resume: str | Path | None = None) -> History:
    """Train ``model`` (either backend) on ``data`` with ``cfg``; ``resume`` names a run state (its path prefix,
    e.g. ``runs/ckpt/step-000010``, or a folder for its latest) to continue from."""
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be an llmdual.TrainConfig, got {type(cfg).__name__}")
    backend = backend_of(model, "training")
    refuse_quantized(model, "train it", "train the float32 model, then llmdual.quantize it")
    if cfg.checkpoint_dir:
        check_run_folder(cfg.checkpoint_dir)
    get_batch, val = batch_source(data, cfg)
    return backend.train(model, get_batch, cfg, val, resume)


def check_run_folder(folder: str | Path) -> Path:
    """``TrainConfig.checkpoint_dir``, created if absent; ``ValueError`` before step 0 if it cannot be created or
    written to (rather than at the first run-state save)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"TrainConfig.checkpoint_dir {str(folder)!r} is not a writable folder: "
                         f"{err.strerror or err}") from None
    return folder


def run_state_prefix(folder: str | Path, step: int) -> Path:
    """The path prefix of the run state after ``step`` optimizer steps (its files add a suffix)."""
    return Path(folder) / f"step-{step:06d}"


def latest_run_state(folder: str | Path) -> Path | None:
    """The prefix of the newest complete run state in ``folder`` (its ``.json`` is written last), or None."""
    found = sorted(Path(folder).glob("step-*.json"))
    return found[-1].with_suffix("") if found else None


def save_run_state(model: Any, moments: dict[str, np.ndarray], step: int, cfg: TrainConfig,
                   history: History) -> Path:
    """Write the run state after ``step`` optimizer steps (model file, optimizer state, then the ``.json``
    that marks it complete) into ``cfg.checkpoint_dir``; return its prefix."""
    prefix = run_state_prefix(cfg.checkpoint_dir, step)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    if model.lora is None:
        save(model, prefix.with_suffix(".safetensors"))
    else:
        weights = get_weights(model)
        base = {name: weights[name] for name in canonical_shapes(model.config, model.task)}
        write_model_file(prefix.with_suffix(".safetensors"), model.config, model.task, base)
        save_lora(model, prefix.with_suffix(".lora.safetensors"))
    write_optimizer_state(prefix.with_suffix(".optim.safetensors"), moments)
    state = {"step": step, "train_config": cfg.to_dict(), "history": history.to_dict()}
    atomic_write(prefix.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(state, indent=1)))
    return prefix


def find_run_state(resume: str | Path) -> Path:
    """The prefix a ``resume`` argument names: a prefix, its ``.json``, or a folder (its latest run state)."""
    prefix = Path(resume)
    if prefix.is_dir():
        latest = latest_run_state(prefix)
        if latest is None:
            raise FileNotFoundError(f"no run state (step-*.json) in {prefix}")
        prefix = latest
    prefix = prefix.with_suffix("") if prefix.suffix == ".json" else prefix
    if not prefix.with_suffix(".json").is_file():
        raise FileNotFoundError(f"no run state at {prefix} (expected {prefix.with_suffix('.json')})")
    return prefix


def restore_run_state(model: Any, resume: str | Path, steps: int) -> tuple[int, dict[str, np.ndarray], History]:
    """Load a run state's weights into ``model`` for a run of ``steps`` steps in all; return its step, checked
    optimizer moments and history. ``ValueError`` before anything is loaded if the run state is past ``steps``."""
    prefix = find_run_state(resume)
    state = json.loads(prefix.with_suffix(".json").read_text())
    if int(state["step"]) > steps:
        raise ValueError(f"run state {prefix} is at step {state['step']}; TrainConfig.steps={steps} must be at least "
                         f"{state['step']}: it counts every step of the run, those already done included")
    config, task, weights = read_model(prefix.with_suffix(".safetensors"))
    if config != model.config or task != model.task:
        raise ValueError(f"run state {prefix} holds a {task} model of {config}, not this {model.task} model "
                         f"of {model.config}")
    lora_file = prefix.with_suffix(".lora.safetensors")
    if lora_file.is_file() != (model.lora is not None):
        held = "LoRA adapters" if lora_file.is_file() else "no LoRA adapters"
        raise ValueError(f"run state {prefix} holds {held}, the model "
                         + (f"has adapters ({describe(model.lora)})" if model.lora else "has none: add_lora first"))
    if model.lora is not None:
        spec, lora_config, lora_task, adapters = read_lora(lora_file)
        check_compatible(model, spec, lora_config, lora_task, str(lora_file))
        weights = {**weights, **adapters}
    optim = prefix.with_suffix(".optim.safetensors")
    moments = check_moments(read_optimizer_state(optim), model.config, model.task, source=str(optim), lora=model.lora)
    set_weights(model, weights)
    history = History.from_dict({**state["history"], "backend": backend_name(model)})
    return int(state["step"]), moments, history


def check_moments(moments: Mapping[str, np.ndarray], config: Config, task: str,
                  source: str = "optimizer state", lora: LoraSpec | None = None) -> dict[str, np.ndarray]:
    """AdamW moments ``m.<name>``/``v.<name>`` of the trained weights (``lora``'s adapters alone, if given) if
    their names, shapes (canonical) and dtype (float32) fit the model; else ``ValueError`` listing the problems,
    before any value reaches an optimizer."""
    expected = {f"{key}.{name}": shape for name, shape in trainable_shapes(config, task, lora).items()
                for key in "mv"}
    problems = [f"missing {name}" for name in expected if name not in moments]
    problems += [f"unexpected {name}" for name in sorted(moments) if name not in expected]
    for name, shape in expected.items():
        value = moments.get(name)
        if value is not None and tuple(np.shape(value)) != shape:
            problems.append(f"{name}: shape {tuple(np.shape(value))}, expected {shape}")
        elif value is not None and getattr(value, "dtype", None) != np.float32:
            problems.append(f"{name}: dtype {getattr(value, 'dtype', type(value).__name__)}, expected float32")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ValueError(f"{source} does not fit this {task} model: {shown}")
    return {name: moments[name] for name in expected}


def due(step: int, interval: int, steps: int) -> bool:
    """Whether finished 0-based ``step`` of ``steps`` is the last one or a multiple of ``interval`` (0: never): when
    ``Monitor`` evaluates (``eval_interval``) or saves a run state (``checkpoint_interval``)."""
    done = step + 1
    return done == steps or bool(interval and done % interval == 0)


class Monitor:
    """Bookkeeping after each optimizer step, shared by both loops: history, progress bar, evaluation and run
    state. ``moments()`` returns the optimizer state to save (canonical names). In a data-parallel run only rank 0
    evaluates, saves the run state and draws the bar; the other ranks record their history."""

    def __init__(self, model: Any, cfg: TrainConfig, val: Sequence[Batch], history: History, start: int,
                 moments: Callable[[], dict[str, np.ndarray]], rank: int = 0):
        if rank:
            cfg, val = cfg.replace(checkpoint_dir=None, progress=False), []
        self.model, self.cfg, self.val, self.history, self.moments = model, cfg, val, history, moments
        self.bar = tqdm(total=cfg.steps, initial=start, desc=f"train {history.backend}", dynamic_ncols=True,
                        disable=not cfg.progress or start >= cfg.steps, leave=False)
        self._t0 = time.perf_counter()

    def step_begin(self) -> None:
        self._t0 = time.perf_counter()

    def _due(self, step: int, interval: int) -> bool:
        """Whether finished 0-based ``step`` is the last one or a multiple of ``interval`` (0: never)."""
        return due(step, interval, self.cfg.steps)

    def evaluating(self, step: int) -> bool:
        """Whether ``step_end(step, ...)`` evaluates."""
        return bool(self.val) and self._due(step, self.cfg.eval_interval)

    def saving_run_state(self, step: int) -> bool:
        """Whether ``step_end(step, ...)`` saves the run state."""
        return bool(self.cfg.checkpoint_dir) and self._due(step, self.cfg.checkpoint_interval)

    def step_end(self, step: int, loss: float, lr: float, grad_norm: float, tokens: int) -> None:
        """Record finished 0-based ``step``, then evaluate and save the run state when due."""
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
        if self.saving_run_state(step):
            save_run_state(self.model, self.moments(), done, cfg, h)
        postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{tokens / seconds:,.0f}"}
        if h.val_loss:
            postfix["val"] = f"{h.val_loss[-1]:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)
        if done == cfg.steps:
            self.bar.close()
