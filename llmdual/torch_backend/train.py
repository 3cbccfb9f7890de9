"""PyTorch training: an explicit loop over ``torch.optim.AdamW``. Mirrors ``llmdual/keras_backend/train.py``.

Per step: micro-batches weighted by their share of the batch's targets, backward into ``.grad``, global-norm
clipping (``clip_grad_norm_``), AdamW at the shared schedule's learning rate. ``Monitor`` does the rest.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmdual.distributed import fail_if_asked, shard_weights
from llmdual.recipe import Batch, BatchFn, History, TrainConfig, check_batch, lr_at
from llmdual.torch_backend import distributed
from llmdual.torch_backend.model import cross_entropy
from llmdual.torch_backend.weights import stored_transposed
from llmdual.training import Monitor, check_moments, restore_run_state
from llmdual.weights import trainable_shapes


def parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable tensors by canonical name (the adapters alone once the model has LoRA), in canonical order (so
    the gradient norm sums in one order)."""
    return {name: model.get_parameter(name) for name in trainable_shapes(model.config, model.task, model.lora)}


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW decaying every tensor with ``ndim >= 2`` (matrices, embeddings), not biases or norm scales."""
    params = list(parameters(model).values())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel updates every tensor (CPU and CUDA), the same formulas as the per-tensor loop
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)


def moments(optimizer: torch.optim.AdamW, model: nn.Module) -> dict[str, np.ndarray]:
    """AdamW's first and second moments as ``m.<name>``/``v.<name>`` in canonical layout (zeros before step 1)."""
    out = {}
    for name, p in parameters(model).items():
        state = optimizer.state.get(p, {})
        for key, slot in (("m", "exp_avg"), ("v", "exp_avg_sq")):
            value = state[slot].detach().float().cpu().numpy() if slot in state else np.zeros(p.shape, np.float32)
            out[f"{key}.{name}"] = np.array(value.T if stored_transposed(name) else value, order="C")  # a copy
    return out


def load_moments(optimizer: torch.optim.AdamW, model: nn.Module, state: dict[str, np.ndarray], step: int) -> None:
    """Restore the moments written by ``moments`` and the step count their bias correction needs; ``ValueError``
    (``check_moments``) before the optimizer is touched if a name, shape or dtype does not fit."""
    state = check_moments(state, model.config, model.task, lora=model.lora)
    for name, p in parameters(model).items():
        slots = {}
        for key, slot in (("m", "exp_avg"), ("v", "exp_avg_sq")):
            value = state[f"{key}.{name}"]
            slots[slot] = torch.from_numpy(np.ascontiguousarray(value.T if stored_transposed(name) else value)).to(p)
        optimizer.state[p] = {"step": torch.tensor(float(step), device=p.device), **slots}  # fused: on p's device


def check_precision(precision: str, model: nn.Module) -> str:
    """``precision`` if the model can train in it here: fp16 needs a CUDA GPU, bf16 and fp32 run anywhere."""
    device = next(model.parameters()).device
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA GPU (the model is on {device.type}); "
                         "use precision 'bf16' or 'fp32'")
    return precision


@contextlib.contextmanager
def precision_context(precision: str, model: nn.Module) -> Iterator[None]:
    """Run the model's forward pass in ``precision`` (autocast; parameters stay float32); fp16 needs a GPU."""
    if check_precision(precision, model) == "fp32":
        yield
        return
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16):
        yield


class Trainer:
    """One AdamW step at a time on a model: the optimizer, its step count (from ``start``: the schedule's position
    and AdamW's bias correction), the training precision and, for fp16, a ``GradScaler`` beside the optimizer.
    With ``cfg.data_parallel`` ranks (inside ``distributed.scope``) each rank runs its shard of every step through
    ``DistributedDataParallel``."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, optimizer: torch.optim.AdamW | None = None,
                 start: int = 0):
        self.model, self.cfg, self.iterations = model, cfg, start
        self.optimizer = make_optimizer(model, cfg) if optimizer is None else optimizer
        if start and not self.optimizer.state:  # as Keras' iteration count: bias correction continues from it
            load_moments(self.optimizer, model, moments(self.optimizer, model), start)
        self.rank, self.world = distributed.rank_and_world(cfg)
        self.module = distributed.wrap(model, self.world)
        self.device = next(model.parameters()).device
        fp16 = check_precision(cfg.precision, model) == "fp16"
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None

    def train_step(self, tensors: list[tuple[torch.Tensor, ...]], weights: np.ndarray) -> tuple[float, float]:
        """Accumulate the weighted micro-batches' gradients, clip, update; (loss, pre-clip gradient norm)."""
        total = torch.zeros((), device=self.device)
        for i in range(self.cfg.grad_accum):
            ids, *mask, targets = (t[i] for t in tensors)
            # DDP all-reduces once per step: the last micro-batch's backward sends the accumulated gradients
            last = i == self.cfg.grad_accum - 1
            with contextlib.nullcontext() if last or self.world == 1 else self.module.no_sync():
                with precision_context(self.cfg.precision, self.model):
                    logits = self.module(ids, *mask)  # the classifier's batches carry an attention mask
                loss = cross_entropy(logits, targets) * float(weights[i])
                (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            total += loss.detach()
        total = distributed.global_loss(total, self.world)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = nn.utils.clip_grad_norm_(list(parameters(self.model).values()), self.cfg.grad_clip or math.inf)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(total), float(norm)

    def step(self, batch: Batch) -> tuple[float, float]:
        """One optimizer step on a numpy ``batch`` (split into ``grad_accum`` micro-batches) at the schedule's
        learning rate; returns (loss, pre-clip global gradient norm)."""
        batch = check_batch(batch, self.model.task, self.cfg, config=self.model.config)
        lr = float(lr_at(self.iterations, self.cfg))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # this rank's shard; DDP averages gradients over ranks, so each rank's weights are scaled by their number
        weights = shard_weights(batch[-1], self.world, self.cfg.grad_accum)[self.rank] * self.world
        batch = distributed.local_batch(batch, self.cfg)
        tensors = [torch.as_tensor(a, device=self.device).chunk(self.cfg.grad_accum) for a in batch]
        was_training = self.model.training
        self.model.train()
        try:
            result = self.train_step(tensors, weights)
        finally:
            self.model.train(was_training)
        self.iterations += 1
        return result


def trainer(model: nn.Module, cfg: TrainConfig, optimizer: torch.optim.AdamW | None = None, start: int = 0) -> Trainer:
    """The contract's trainer: one AdamW step at a time on ``model``, continuing from optimizer step ``start``."""
    return Trainer(model, cfg, optimizer, start)


def train(model: nn.Module, get_batch: BatchFn, cfg: TrainConfig, val: Sequence[Batch],
          resume: str | Path | None = None) -> History:
    """Run steps ``start .. cfg.steps - 1`` (``start`` from ``resume``'s run state, else 0); return the history.
    With ``cfg.data_parallel`` ranks this runs in each rank's process (torchrun); only rank 0 saves run states."""
    with distributed.scope(cfg.data_parallel):
        optimizer = make_optimizer(model, cfg)
        start, history = 0, History("torch")
        if resume is not None:
            start, state, history = restore_run_state(model, resume)
            load_moments(optimizer, model, state, start)
        trainer = Trainer(model, cfg, optimizer, start)
        monitor = Monitor(model, cfg, val, history, start, lambda: moments(optimizer, model), trainer.rank)
        for step in range(start, cfg.steps):
            fail_if_asked(trainer.rank, step)
            monitor.step_begin()
            batch = get_batch(step)
            loss, norm = trainer.step(batch)
            monitor.step_end(step, loss, float(lr_at(step, cfg)), norm, np.asarray(batch[0]).size)
    return history
