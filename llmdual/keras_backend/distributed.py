"""Keras data parallelism on each Keras backend's own engine: ``keras.distribution.DataParallel`` over
``jax.devices()`` on JAX (one program over the global batch, sharded by rows), ``tf.distribute.MirroredStrategy``
on TensorFlow (one replica per device; ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names a cluster). Keras
on the torch backend has none. Mirrors ``llmdual/torch_backend/distributed.py``; the shard plan is
``llmdual.distributed``'s.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

import keras

from llmdual.distributed import KERAS_TORCH_REASON, check_launched
from llmdual.recipe import TrainConfig


@contextlib.contextmanager
def scope(data_parallel: int) -> Iterator[None]:
    """Build and train a ``data_parallel``-replica run inside this: JAX sets a ``DataParallel`` distribution over
    that many devices, TensorFlow enters a ``MirroredStrategy`` over that many GPUs, or logical CPU devices (split
    here, so before TensorFlow initialises)."""
    if data_parallel == 1:
        yield
        return
    backend = keras.backend.backend()
    if backend == "jax":
        devices = keras.distribution.list_devices()
        if len(devices) != data_parallel:
            raise ValueError(f"data_parallel={data_parallel} needs {data_parallel} JAX devices, JAX sees "
                             f"{len(devices)}; on CPU set XLA_FLAGS=--xla_force_host_platform_device_count="
                             f"{data_parallel} before JAX is imported (a fresh process)")
        with keras.distribution.DataParallel(devices=devices).scope():
            yield
    elif backend == "tensorflow":
        with _strategy(data_parallel).scope():
            yield
    else:
        raise ValueError(f"data_parallel={data_parallel}: {KERAS_TORCH_REASON}; use KERAS_BACKEND=jax or "
                         f"tensorflow, or the torch backend (DistributedDataParallel)")


def _strategy(data_parallel: int):
    """The TensorFlow strategy for ``data_parallel`` replicas: multi-worker (one replica per worker) when
    ``TF_CONFIG`` names a cluster, else mirrored over GPUs or logical CPU devices of this process."""
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        workers = len(json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"])
        check_launched(data_parallel, workers, "keras")
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


def rank_and_world(cfg: TrainConfig) -> tuple[int, int]:
    """``(rank, replicas)``: the rank is this process's (0 but for multi-process runs), which saves run states;
    ``ValueError`` naming how to launch if the distribution or strategy in effect lacks ``cfg.data_parallel``
    replicas."""
    if cfg.data_parallel == 1:
        return 0, 1
    if keras.backend.backend() == "jax":
        import jax

        distribution = keras.distribution.distribution()
        world = len(distribution.device_mesh.devices.reshape(-1)) if distribution is not None else 1
        check_launched(cfg.data_parallel, world, "keras")
        return jax.process_index(), world
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.get_strategy()
        check_launched(cfg.data_parallel, strategy.num_replicas_in_sync, "keras")
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
                         f"llmdual.keras_backend.distributed.scope({world}) to train it on {world} replicas")
    return model


def blocks(cfg: TrainConfig) -> int:
    """Into how many contiguous blocks of rows the engine splits a batch fed to this process, one per replica:
    ``cfg.data_parallel`` on TensorFlow, 1 on JAX (one program over the whole batch)."""
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
