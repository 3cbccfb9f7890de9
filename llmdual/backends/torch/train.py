"""PyTorch training: an explicit loop over ``torch.optim.AdamW``. Mirrors ``llmdual/backends/keras/train.py``.

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
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor

from llmdual.backends.torch import distributed
from llmdual.backends.torch.model import cross_entropy
from llmdual.backends.torch.weights import get_weights, set_weights, stored_transposed
from llmdual.core.recipe import Batch, BatchFn, History, TrainConfig, check_batch, lr_at
from llmdual.core.shard import fail_if_asked, shard_weights
from llmdual.core.weights import trainable_shapes
from llmdual.training import Monitor, check_moments, due, restore_run_state


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
    """AdamW's first and second moments as ``m.<name>``/``v.<name>`` in canonical layout (zeros before step 1); of
    a model sharded by FSDP2, gathered by every rank at once."""
    out = {}
    for name, p in parameters(model).items():
        state = optimizer.state.get(p, {})
        for key, slot in (("m", "exp_avg"), ("v", "exp_avg_sq")):
            if slot not in state:
                value = np.zeros(p.shape, np.float32)
            else:
                value = state[slot].detach()
                value = (value.full_tensor() if isinstance(value, DTensor) else value).float().cpu().numpy()
            out[f"{key}.{name}"] = np.array(value.T if stored_transposed(name) else value, order="C")  # a copy
    return out


def load_moments(optimizer: torch.optim.AdamW, model: nn.Module, state: dict[str, np.ndarray], step: int) -> None:
    """Restore the moments written by ``moments`` and the step count their bias correction needs (each rank its
    shard of an FSDP2 model's); ``ValueError`` (``check_moments``) before the optimizer is touched if a name, shape
    or dtype does not fit."""
    state = check_moments(state, model.config, model.task, lora=model.lora)
    for name, p in parameters(model).items():
        slots = {}
        for key, slot in (("m", "exp_avg"), ("v", "exp_avg_sq")):
            value = state[f"{key}.{name}"]
            value = torch.from_numpy(np.ascontiguousarray(value.T if stored_transposed(name) else value))
            value = value.to(device=p.device, dtype=p.dtype)
            if isinstance(p, DTensor):  # every rank holds the whole: each keeps its shard, no communication
                value = distribute_tensor(value, p.device_mesh, p.placements, src_data_rank=None)
            slots[slot] = value
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
    ``DistributedDataParallel``, or through FSDP2 (``LLMDUAL_TORCH_DP=fsdp``): then ``trained`` is a sharded copy of
    the model, which the optimizer updates and ``_gather`` copies back into the model."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, optimizer: torch.optim.AdamW | None = None,
                 start: int = 0):
        self.model, self.cfg, self.iterations = model, cfg, start
        self.rank, self.world = distributed.rank_and_replicas(cfg)
        self.module = distributed.wrap(model, self.world)
        self.sharded = isinstance(self.module, FSDPModule)
        self.trained = self.module if self.sharded else model
        if self.sharded and optimizer is not None:
            raise ValueError("an FSDP2 trainer builds its own optimizer over the sharded parameters; pass "
                             "optimizer=None (and restore moments with load_moments(trainer.optimizer, "
                             "trainer.trained, ...))")
        self.optimizer = make_optimizer(self.trained, cfg) if optimizer is None else optimizer
        if start and not self.optimizer.state:  # as Keras' iteration count: bias correction continues from it
            load_moments(self.optimizer, self.trained, moments(self.optimizer, self.trained), start)
        self.device = next(self.trained.parameters()).device
        fp16 = check_precision(cfg.precision, self.trained) == "fp16"
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None

    def train_step(self, tensors: list[tuple[torch.Tensor, ...]], weights: np.ndarray) -> tuple[float, float]:
        """Accumulate the weighted micro-batches' gradients, clip, update; (loss, pre-clip gradient norm)."""
        total = torch.zeros((), device=self.device)
        for i in range(self.cfg.grad_accum):
            ids, *mask, targets = (t[i] for t in tensors)
            with self._syncing(i == self.cfg.grad_accum - 1):
                with precision_context(self.cfg.precision, self.trained):
                    logits = self.module(ids, *mask)  # the classifier's batches carry an attention mask
                loss = cross_entropy(logits, targets) * float(weights[i])
                (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            total += loss.detach()
        total = distributed.global_loss(total, self.world)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = nn.utils.clip_grad_norm_(list(parameters(self.trained).values()), self.cfg.grad_clip or math.inf)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(total), float(norm)

    def _syncing(self, last: bool) -> contextlib.AbstractContextManager:
        """The context of a micro-batch's backward: gradients are reduced over the ranks once per step, on the last
        micro-batch's backward (DDP's ``no_sync()`` and FSDP2's ``set_requires_gradient_sync`` before)."""
        if self.sharded:
            self.module.set_requires_gradient_sync(last)
        return contextlib.nullcontext() if last or self.world == 1 or self.sharded else self.module.no_sync()

    def _gather(self) -> dict[str, np.ndarray]:
        """Copy an FSDP2 run's sharded weights into the model and return its AdamW moments (canonical), gathered:
        a collective every rank joins."""
        set_weights(self.model, get_weights(self.module))
        return moments(self.optimizer, self.module)

    def step(self, batch: Batch) -> tuple[float, float]:
        """One optimizer step on a numpy ``batch`` (split into ``grad_accum`` micro-batches) at the schedule's
        learning rate; returns (loss, pre-clip global gradient norm)."""
        batch = check_batch(batch, self.model.task, self.cfg, config=self.model.config)
        lr = float(lr_at(self.iterations, self.cfg))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # this rank's shard; DDP and FSDP2 average gradients over ranks, so each rank's weights are scaled by their
        # number
        weights = shard_weights(batch[-1], self.world, self.cfg.grad_accum)[self.rank] * self.world
        batch = distributed.local_batch(batch, self.cfg)
        tensors = [torch.as_tensor(a, device=self.device).chunk(self.cfg.grad_accum) for a in batch]
        was_training = self.trained.training
        self.trained.train()
        try:
            result = self.train_step(tensors, weights)
        finally:
            self.trained.train(was_training)
        self.iterations += 1
        return result


def trainer(model: nn.Module, cfg: TrainConfig, optimizer: torch.optim.AdamW | None = None, start: int = 0) -> Trainer:
    """The contract's trainer: one AdamW step at a time on ``model``, continuing from optimizer step ``start``."""
    return Trainer(model, cfg, optimizer, start)


def train(model: nn.Module, get_batch: BatchFn, cfg: TrainConfig, val: Sequence[Batch],
          resume: str | Path | None = None) -> History:
    """Run steps ``start .. cfg.steps - 1`` (``start`` from ``resume``'s run state, else 0); return the history.
    With ``cfg.data_parallel`` ranks this runs in each rank's process (torchrun); only rank 0 saves run states. Under
    FSDP2 every rank gathers the weights and moments into ``model`` whenever rank 0 evaluates or saves, and at the
    end, so ``model`` holds the trained weights on every rank."""
    with distributed.scope(cfg.data_parallel):
        start, state, history = 0, None, History("torch")
        if resume is not None:
            start, state, history = restore_run_state(model, resume, cfg.steps)
        trainer = Trainer(model, cfg, start=start)  # FSDP2 shards a copy of the restored model
        if state is not None:
            load_moments(trainer.optimizer, trainer.trained, state, start)
        gathered: dict[str, np.ndarray] = {}
        read = (lambda: gathered) if trainer.sharded else (lambda: moments(trainer.optimizer, model))
        monitor = Monitor(model, cfg, val, history, start, read, trainer.rank)
        for step in range(start, cfg.steps):
            fail_if_asked(trainer.rank, step)
            monitor.step_begin()
            batch = get_batch(step)
            loss, norm = trainer.step(batch)
            # every rank, though rank 0 alone evaluates and saves; after the last step for the caller's model
            reads = (step == cfg.steps - 1 or bool(val) and due(step, cfg.eval_interval, cfg.steps)
                     or bool(cfg.checkpoint_dir) and due(step, cfg.checkpoint_interval, cfg.steps))
            if trainer.sharded and reads:
                gathered.update(trainer._gather())
            monitor.step_end(step, loss, float(lr_at(step, cfg)), norm, np.asarray(batch[0]).size)
    return history
