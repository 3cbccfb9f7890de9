"""The data-parallel shard plan, framework-free: how one step's batch is split over ranks, which rank this process
is, and the launch-environment variables the backends read.

A step's ``batch_size`` rows are first split into ``grad_accum`` micro-batches (as on one device), then each
micro-batch into ``world`` equal, contiguous shards. Rank ``r`` runs its shard of every micro-batch, in micro-batch
order, so the union of the ranks' shards of a step is exactly the single-device batch, in the same order. Each
shard's loss is weighted by its share of the step's counted targets, so summed over ranks and micro-batches the
gradients equal the single-device mean-loss gradient.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

import numpy as np

from llmdual.core.recipe import Batch, shard_problem

# The variable telling each PyTorch rank's process which data parallelism wraps the model, and its values
TORCH_DP = "LLMDUAL_TORCH_DP"
TORCH_DP_MODES = ("ddp", "fsdp")
# Environment variables: which rank to stop, and after how many steps, to test a rank dying mid-run
FAIL_RANK, FAIL_STEP = "LLMDUAL_FAIL_RANK", "LLMDUAL_FAIL_STEP"
FAIL_EXIT_CODE = 17


def check_degree(data_parallel: int, unit: str = "") -> int:
    """``data_parallel`` if it is an integer >= 1, else a one-line ``ValueError`` (``unit``: what it counts, e.g.
    ranks or replicas, named in the message)."""
    if isinstance(data_parallel, bool) or not isinstance(data_parallel, int) or data_parallel < 1:
        counted = f" ({unit})" if unit else ""
        raise ValueError(f"data_parallel must be an integer >= 1{counted}, got {data_parallel!r}")
    return data_parallel


def check_world(batch_size: int, grad_accum: int, world: int) -> int:
    """``world`` if every micro-batch of ``batch_size // grad_accum`` rows splits into ``world`` equal shards."""
    check_degree(world)
    problem = shard_problem(batch_size, grad_accum, world)
    if problem:
        raise ValueError(problem)
    return world


def shard_rows(batch_size: int, grad_accum: int, world: int) -> np.ndarray:
    """Row indices, shape ``(world, grad_accum, rows)``: ``[r, i]`` are rank ``r``'s rows of micro-batch ``i``."""
    check_world(batch_size, grad_accum, world)
    rows = batch_size // (grad_accum * world)
    return np.arange(batch_size).reshape(grad_accum, world, rows).transpose(1, 0, 2)


def shard(batch: Batch, rank: int, world: int, grad_accum: int) -> Batch:
    """Rank ``rank``'s rows of a step's ``batch`` (every array), its micro-batches in order."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    index = shard_rows(len(batch[0]), grad_accum, world)[rank].reshape(-1)
    return tuple(np.asarray(a)[index] for a in batch)


def rank_major(batch: Batch, world: int, grad_accum: int) -> Batch:
    """Every rank's shard, concatenated rank by rank: the layout of engines that split a batch into contiguous
    per-replica blocks (``tf.distribute``), so replica ``r`` receives exactly rank ``r``'s shard."""
    index = shard_rows(len(batch[0]), grad_accum, world).reshape(-1)
    return tuple(np.asarray(a)[index] for a in batch)


def shard_weights(targets: np.ndarray, world: int, grad_accum: int) -> np.ndarray:
    """Shape ``(world, grad_accum)``: each shard's share of the step's counted targets (not -100), the weight of
    its mean loss, so the weighted sum over every rank and micro-batch is the step's mean loss."""
    targets = np.asarray(targets)
    index = shard_rows(len(targets), grad_accum, world)
    counts = (targets[index].reshape(world, grad_accum, -1) != -100).sum(axis=2).astype(np.float64)
    empty = np.argwhere(counts == 0)
    if len(empty):
        r, i = empty[0]
        raise ValueError(f"rank {r}'s shard of micro-batch {i} has no counted target (all -100): its mean loss is "
                         f"undefined; use fewer ranks or micro-batches, or batches without all-padding rows")
    return (counts / counts.sum()).astype(np.float32)


def rank_and_world(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """This process's ``(rank, world size)`` from its launcher's environment: ``RANK``/``WORLD_SIZE`` (torchrun and
    ``run_processes`` set both), else Keras' ``KERAS_DISTRIBUTION_PROCESS_ID``/``NUM_PROCESSES``, else TensorFlow's
    ``TF_CONFIG`` (task index, workers); ``(0, 1)`` outside a launcher; ``ValueError`` for values that are not a rank
    of the world."""
    environ = os.environ if environ is None else environ
    text_rank, text_world = environ.get("RANK"), environ.get("WORLD_SIZE")
    if text_rank is None and "KERAS_DISTRIBUTION_NUM_PROCESSES" in environ:
        text_rank = environ.get("KERAS_DISTRIBUTION_PROCESS_ID", "0")
        text_world = environ["KERAS_DISTRIBUTION_NUM_PROCESSES"]
    elif text_rank is None and environ.get("TF_CONFIG"):
        tf_config = json.loads(environ["TF_CONFIG"])
        text_rank = str(tf_config.get("task", {}).get("index", 0))
        text_world = str(len(tf_config.get("cluster", {}).get("worker", [])) or 1)
    text_rank, text_world = text_rank or "0", text_world or "1"
    try:
        rank, world = int(text_rank), int(text_world)
    except ValueError:
        raise ValueError(f"RANK and WORLD_SIZE must be integers, got RANK={text_rank!r} WORLD_SIZE={text_world!r}"
                         ) from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE), got RANK={rank} WORLD_SIZE={world}")
    return rank, world


def check_launched(data_parallel: int, world: int, backend: str, how: str) -> None:
    """``ValueError`` saying ``how`` to launch when a ``backend`` run asks for ``data_parallel`` ranks but has
    ``world``."""
    if world == data_parallel:
        return
    raise ValueError(f"TrainConfig.data_parallel is {data_parallel} but this {backend} run has {world} "
                     f"rank(s)/replica(s); launch it as: {how}")


def fail_if_asked(rank: int, step: int, environ: Mapping[str, str] | None = None) -> None:
    """Exit this process at once (no clean-up) if ``LLMDUAL_FAIL_RANK``/``LLMDUAL_FAIL_STEP`` name this rank and
    the step about to run: how tests kill a rank mid-run."""
    environ = os.environ if environ is None else environ
    if environ.get(FAIL_RANK) == str(rank) and environ.get(FAIL_STEP) == str(step):
        sys.stderr.write(f"rank {rank}: stopping before step {step} ({FAIL_RANK} test hook)\n")
        sys.stderr.flush()
        os._exit(FAIL_EXIT_CODE)
