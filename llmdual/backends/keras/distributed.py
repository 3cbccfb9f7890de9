"""Keras data parallelism on each Keras backend's own engine: ``keras.distribution.DataParallel`` over
``jax.devices()`` on JAX (one program over the global batch, sharded by rows; the devices of this process, or of
every process ``KERAS_DISTRIBUTION_*`` joins through ``jax.distributed``), ``tf.distribute.MirroredStrategy``
on TensorFlow (one replica per device; ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names a cluster). Keras
on the torch backend has none. Mirrors ``llmdual/backends/torch/distributed.py``; the shard plan is
``llmdual.core.shard``'s.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

import keras

from llmdual.core.recipe import Batch, TrainConfig
from llmdual.core.shard import check_degree, check_launched, rank_major

# Keras on the torch backend has no data parallelism of its own: keras/src/backend/__init__.py sets
# distribution_lib = None for it (Keras 3.15), so keras.distribution cannot place anything there.
KERAS_TORCH_REASON = ("Keras on the torch backend has no data parallelism: keras.distribution has no torch "
                      "implementation (Keras sets backend.distribution_lib = None for torch), and Keras' fit does not "
                      "wrap the model in DistributedDataParallel")


def _how(data_parallel: int) -> str:
    """How to launch a Keras run of ``data_parallel`` replicas."""
    return (f"build and train inside llmdual.backends.keras.distributed.scope({data_parallel}) (llmdual train does "
            f"this)")



@contextlib.contextmanager
def scope(data_parallel: int) -> Iterator[None]:
    """Build and train a ``data_parallel``-replica run inside this: JAX sets a ``DataParallel`` distribution over
    that many devices (first joining the other processes, if ``KERAS_DISTRIBUTION_*`` names several), TensorFlow
    enters a ``MirroredStrategy`` over that many GPUs, or logical CPU devices (split here, so before TensorFlow
    initialises), or ``MultiWorkerMirroredStrategy`` over the workers ``TF_CONFIG`` names."""
    check_degree(data_parallel, "replicas")
    if data_parallel == 1:
        yield
        return
    backend = keras.backend.backend()
    if backend == "jax":
        _join_processes()
        devices = keras.distribution.list_devices()
        if len(devices) != data_parallel:
            raise ValueError(f"data_parallel={data_parallel} needs {data_parallel} JAX devices, JAX sees "
                             f"{len(devices)}; on CPU set XLA_FLAGS=--xla_force_host_platform_device_count="
                             f"{data_parallel} before JAX is imported (a fresh process), or run {data_parallel} "
                             f"processes with KERAS_DISTRIBUTION_NUM_PROCESSES={data_parallel}")
        # each process feeds its own rows (local_batch): Keras must not shard a dataset again
        with keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False).scope():
            yield
    elif backend == "tensorflow":
        with _strategy(data_parallel).scope():
            yield
    else:
        raise ValueError(f"data_parallel={data_parallel}: {KERAS_TORCH_REASON}; use KERAS_BACKEND=jax or "
                         f"tensorflow, or the torch backend (DistributedDataParallel)")


def _join_processes() -> None:
    """Join the cluster of JAX processes that ``KERAS_DISTRIBUTION_*`` describe, once: ``keras.distribution.initialize``
    (``jax.distributed.initialize``, then one random seed for every process, so layers initialise alike)."""
    import jax

    if int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1")) > 1 and not jax.distributed.is_initialized():
        keras.distribution.initialize()


def _strategy(data_parallel: int):
    """The TensorFlow strategy for ``data_parallel`` replicas: multi-worker (one replica per worker) when
    ``TF_CONFIG`` names a cluster, else mirrored over GPUs or logical CPU devices of this process."""
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        workers = len(json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"])
        check_launched(data_parallel, workers, "keras", _how(data_parallel))
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if len(gpus) < data_parallel:
            raise ValueError(f"data_parallel={data_parallel} needs {data_parallel} GPUs, TensorFlow sees {len(gpus)}")
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(data_parallel)])
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:  # listing logical devices would initialise TensorFlow, after which they cannot be split
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * data_parallel)
    except RuntimeError:
        if len(tf.config.list_logical_devices("CPU")) != data_parallel:
            raise ValueError(f"data_parallel={data_parallel} needs {data_parallel} logical CPU devices, but "
                             f"TensorFlow has initialised already with {len(tf.config.list_logical_devices('CPU'))}; "
                             f"enter this scope before TensorFlow runs anything (a fresh process)") from None
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(data_parallel)])


def rank_and_replicas(cfg: TrainConfig) -> tuple[int, int]:
    """``(rank, replicas)``: the rank is this process's (0 but for multi-process runs), which saves run states;
    ``ValueError`` naming how to launch if the distribution or strategy in effect lacks ``cfg.data_parallel``
    replicas."""
    if cfg.data_parallel == 1:
        return 0, 1
    if keras.backend.backend() == "jax":
        import jax

        distribution = keras.distribution.distribution()
        world = len(distribution.device_mesh.devices.reshape(-1)) if distribution is not None else 1
        check_launched(cfg.data_parallel, world, "keras", _how(cfg.data_parallel))
        return jax.process_index(), world
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.get_strategy()
        check_launched(cfg.data_parallel, strategy.num_replicas_in_sync, "keras", _how(cfg.data_parallel))
        resolver = getattr(strategy, "cluster_resolver", None)
        return int(getattr(resolver, "task_id", 0) or 0), strategy.num_replicas_in_sync
    raise ValueError(f"data_parallel={cfg.data_parallel}: {KERAS_TORCH_REASON}")


def wrap(model: keras.Model, world: int) -> keras.Model:
    """The model a training step runs, unchanged: Keras replicates it through the distribution or strategy its
    variables were created under; ``ValueError`` if they were created outside ``scope`` (on one device)."""
    if world == 1:
        return model
    first = model.trainable_variables[0]
    if keras.backend.backend() == "jax":
        placed = len(first.value.sharding.device_set) == world
    else:
        import tensorflow as tf

        placed = tf.distribute.get_strategy().extended.variable_created_in_scope(first.value)
    if not placed:
        raise ValueError(f"the model's variables live on one device: build it inside "
                         f"llmdual.backends.keras.distributed.scope({world}) to train it on {world} replicas")
    return model


def local_batch(batch: Batch, cfg: TrainConfig) -> Batch:
    """The rows of a step's batch this process feeds its engine: every rank's shard, rank by rank (each replica,
    or JAX device, takes one contiguous block), of which a process of a multi-process JAX run feeds its own
    devices' blocks (Keras assembles the global batch from every process's rows)."""
    batch = rank_major(batch, cfg.data_parallel, cfg.grad_accum)
    if keras.backend.backend() != "jax" or cfg.data_parallel == 1:
        return batch
    import jax

    rows = len(batch[0]) // jax.process_count()
    return tuple(a[jax.process_index() * rows:(jax.process_index() + 1) * rows] for a in batch)


def blocks(cfg: TrainConfig) -> int:
    """Into how many blocks of rows, one per replica, the engine splits a batch fed to this process, each replica
    computing its own: ``cfg.data_parallel`` on TensorFlow, 1 on JAX (one program over the global batch)."""
    return cfg.data_parallel if keras.backend.backend() == "tensorflow" else 1


def global_loss(total, world: int):
    """The step's loss from each replica's share (TensorFlow: the sum over replicas, as Keras sums their
    gradients; JAX's one program already computes the whole batch)."""
    return reduce_sum([total])[0] if world > 1 else total


def reduce_sum(values: list) -> list:
    """``values`` summed over TensorFlow's replicas inside a replica context with several (what Keras' optimizer
    does to gradients before it updates); unchanged elsewhere."""
    if keras.backend.backend() != "tensorflow":
        return values
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return values
    return context.all_reduce(tf.distribute.ReduceOp.SUM, values)
