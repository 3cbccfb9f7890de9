"""PyTorch data parallelism on its own engine: ``torch.distributed``, one process per rank as ``torchrun`` launches
them (gloo on CPU, nccl with one GPU per rank), with ``DistributedDataParallel`` or, when ``LLMDUAL_TORCH_DP=fsdp``,
FSDP2 (``fully_shard``). Mirrors
``llmdual/backends/keras/distributed.py``; the shard plan is ``llmdual.core.shard``'s.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from llmdual.core.recipe import Batch, TrainConfig
from llmdual.core.shard import TORCH_DP, TORCH_DP_MODES, check_degree, check_launched, rank_and_world, shard


def _how(data_parallel: int) -> str:
    """How to launch a PyTorch run of ``data_parallel`` ranks."""
    return (f"torchrun --nproc-per-node {data_parallel} -m llmdual train --backend torch --set "
            f"data_parallel={data_parallel} ... (or llmdual train alone, which launches torchrun)")



@contextlib.contextmanager
def scope(data_parallel: int) -> Iterator[None]:
    """Join the process group torchrun's environment describes (gloo on CPU, nccl on CUDA; one GPU per local
    rank) for a ``data_parallel``-rank run, and leave it afterwards; nothing to do for one rank or when the
    caller has joined already."""
    check_degree(data_parallel, "ranks")
    if data_parallel == 1 or dist.is_initialized():
        yield
        return
    _, world = rank_and_world()
    check_launched(data_parallel, world, "torch", _how(data_parallel))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank_and_replicas(cfg: TrainConfig) -> tuple[int, int]:
    """This process's ``(rank, ranks)`` for ``cfg.data_parallel``; ``ValueError`` naming how to launch if the
    process group does not have that many ranks."""
    if cfg.data_parallel == 1:
        return 0, 1
    world = dist.get_world_size() if dist.is_initialized() else 1
    check_launched(cfg.data_parallel, world, "torch", _how(cfg.data_parallel))
    return dist.get_rank(), world


def wrap(model: nn.Module, world: int) -> nn.Module:
    """The module a training step runs: ``DistributedDataParallel`` over the model (moved to this rank's GPU on
    CUDA), which averages gradients over ranks during backward; with ``LLMDUAL_TORCH_DP=fsdp`` a copy of the model
    sharded by FSDP2 (``fully_shard`` per block, then the whole), whose parameters are DTensors the optimizer must
    be built on; the model itself for one rank."""
    if world == 1:
        return model
    mode = os.environ.get(TORCH_DP) or "ddp"
    if mode not in TORCH_DP_MODES:
        raise ValueError(f"{TORCH_DP} must be one of {list(TORCH_DP_MODES)}, got {mode!r}")
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    if mode == "fsdp":  # a copy: the caller's model keeps plain parameters, the trainer copies weights back
        sharded = copy.deepcopy(model) if device is None else copy.deepcopy(model).to(device)
        for block in sharded.h:
            fully_shard(block)
        return fully_shard(sharded)
    if device is not None:
        return DistributedDataParallel(model.to(device), device_ids=[device.index])
    return DistributedDataParallel(model)


def local_batch(batch: Batch, cfg: TrainConfig) -> Batch:
    """The rows of a step's batch this process feeds its engine: this rank's shard of every micro-batch, in
    micro-batch order (``llmdual.core.shard.shard``)."""
    rank, world = rank_and_replicas(cfg)
    return shard(batch, rank, world, cfg.grad_accum)


def blocks(cfg: TrainConfig) -> int:
    """Into how many blocks of rows, one per replica, the engine splits a batch fed to this process, each replica
    computing its own: 1, as each rank's process is fed its own shard."""
    return 1


def global_loss(total: torch.Tensor, world: int) -> torch.Tensor:
    """The step's loss from each rank's share: every rank weights its loss by ``world`` (DDP averages gradients,
    so they sum to the single-device gradient), so the mean over ranks is the single-device loss."""
    return reduce_sum([total])[0] / world if world > 1 else total


def reduce_sum(values: list) -> list:
    """``values`` (tensors) summed over the ranks of the process group (in place), as DDP does to gradients
    before it averages them; unchanged outside one."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for value in values:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return values
