"""Data-parallel training, framework-free: how one step's batch is sharded over ranks, which rank this process
is, and the launch command each framework's distributed engine needs.

The shard plan: a step's ``batch_size`` rows are first split into ``grad_accum`` micro-batches (as on one device),
then each micro-batch into ``world`` equal, contiguous shards. Rank ``r`` runs its shard of every micro-batch, in
micro-batch order, so the union of the ranks' shards of a step is exactly the single-device batch, in the same order.
Each shard's loss is weighted by its share of the step's counted targets, so summed over ranks and micro-batches
the gradients equal the single-device mean-loss gradient.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from llmdual.recipe import Batch, shard_problem

# The engines: (backend, Keras backend or None, what runs the ranks)
ENGINES: dict[str, tuple[str, str | None, str]] = {
    "torch-ddp": ("torch", None, "torch.distributed DistributedDataParallel, one process per rank (torchrun)"),
    "torch-fsdp": ("torch", None, "torch.distributed.fsdp.fully_shard (FSDP2) per block, then the model, one process "
                                  "per rank (torchrun)"),
    "keras-jax": ("keras", "jax", "keras.distribution.DataParallel over jax.devices()"),
    "keras-tf": ("keras", "tensorflow", "tf.distribute.MirroredStrategy over logical devices"),
    "keras-jax-multiprocess": ("keras", "jax", "keras.distribution.DataParallel over jax.distributed processes, one "
                                               "per rank (gloo collectives on CPU)"),
    "keras-tf-multiworker": ("keras", "tensorflow", "tf.distribute.MultiWorkerMirroredStrategy, one worker process "
                                                    "per rank (TF_CONFIG)"),
}
# The PyTorch engines (torchrun), and the variable telling each rank's process which data parallelism wraps the model
TORCH_ENGINES = {"torch-ddp": "ddp", "torch-fsdp": "fsdp"}
TORCH_DP = "LLMDUAL_TORCH_DP"
TORCH_DP_MODES = tuple(TORCH_ENGINES.values())
# Engines running one process per rank that we start ourselves (JAX and TensorFlow have no launcher), on this host,
# and the one-process engine each equals on one rank
PROCESS_ENGINES = {"keras-jax-multiprocess": "keras-jax", "keras-tf-multiworker": "keras-tf"}
# Where the processes of a PROCESS_ENGINES run meet: host:port of rank 0 (TensorFlow's workers take the next ports);
# default 127.0.0.1 and a free port
COORDINATOR = "LLMDUAL_COORDINATOR"
# Keras on the torch backend has no data parallelism of its own: keras/src/backend/__init__.py sets
# distribution_lib = None for it (Keras 3.15), so keras.distribution cannot place anything there.
KERAS_TORCH_REASON = ("Keras on the torch backend has no data parallelism: keras.distribution has no torch "
                      "implementation (Keras sets backend.distribution_lib = None for torch), and Keras' fit does not "
                      "wrap the model in DistributedDataParallel")
# Environment variables: which rank to stop, and after how many steps, to test a rank dying mid-run
FAIL_RANK, FAIL_STEP = "LLMDUAL_FAIL_RANK", "LLMDUAL_FAIL_STEP"
FAIL_EXIT_CODE = 17


def check_world(batch_size: int, grad_accum: int, world: int) -> int:
    """``world`` if every micro-batch of ``batch_size // grad_accum`` rows splits into ``world`` equal shards."""
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"data_parallel must be an integer >= 1, got {world!r}")
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


def check_launched(data_parallel: int, world: int, backend: str) -> None:
    """``ValueError`` saying how to launch when a run asks for ``data_parallel`` ranks but has ``world``."""
    if world == data_parallel:
        return
    how = {"torch": f"torchrun --nproc-per-node {data_parallel} -m llmdual train --backend torch "
                    f"--set data_parallel={data_parallel} ... (or llmdual train alone, which launches torchrun)",
           "keras": f"build and train inside llmdual.keras_backend.distributed.scope({data_parallel}) (llmdual "
                    f"train does this)"}[backend]
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


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(threads: int, world: int) -> int:
    """CPU threads each of ``world`` workers gets so that together they use ``threads`` (at least 1 each)."""
    return max(1, threads // world)


def engine_env(engine: str, world: int, threads: int | None = None) -> dict[str, str]:
    """Environment variables a fresh process needs to run ``engine`` with ``world`` replicas on CPU: the Keras
    backend, JAX's virtual host devices (read only when JAX starts; one per process of a multi-process run), the
    PyTorch wrapper (``LLMDUAL_TORCH_DP``), and ``threads`` per worker (split between the processes of a
    one-process-per-rank engine)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown data-parallel engine {engine!r}; choose from {sorted(ENGINES)}")
    _, keras_backend, _ = ENGINES[engine]
    env = {"TF_CPP_MIN_LOG_LEVEL": "3"}
    if keras_backend:
        env["KERAS_BACKEND"] = keras_backend
    if engine in TORCH_ENGINES:
        env[TORCH_DP] = TORCH_ENGINES[engine]
    if keras_backend == "jax":
        devices = 1 if engine in PROCESS_ENGINES else world
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
        # XLA:CPU runs every device's program on one thread pool (PJRT_NPROC threads, default: the cores); the
        # all-reduce between 2 devices of one process never completes with 2 or 3 threads (small preset), with 4 it does
        env["PJRT_NPROC"] = str(max(threads or usable_cores(), 2 * devices))
    if threads is not None:
        split = engine in TORCH_ENGINES or engine in PROCESS_ENGINES
        per = str(threads_per_worker(threads, world) if split else threads)
        env.update(OMP_NUM_THREADS=per, MKL_NUM_THREADS=per)
    return env


def free_port(host: str = "127.0.0.1", count: int = 1) -> int:
    """A TCP port on ``host`` that, with the ``count - 1`` after it, nothing listens on now."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        try:
            for offset in range(1, count):
                with socket.socket() as s:
                    s.bind((host, port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError(f"found no {count} free consecutive TCP ports on {host}")


def coordinator(environ: Mapping[str, str] | None = None, ports: int = 1) -> tuple[str, int]:
    """``(host, port)`` where the processes of a run meet (``ports`` consecutive ones from ``port``):
    ``LLMDUAL_COORDINATOR`` (``host:port``) or 127.0.0.1 and a free port; ``ValueError`` for a value that is not
    ``host:port``."""
    environ = os.environ if environ is None else environ
    text = environ.get(COORDINATOR)
    if not text:
        return "127.0.0.1", free_port("127.0.0.1", ports)
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{COORDINATOR} must be host:port, got {text!r}")
    return host, int(port)


def rank_env(engine: str, rank: int, world: int, host: str, port: int) -> dict[str, str]:
    """The environment of rank ``rank`` of a ``world``-process run of ``engine`` meeting at ``host:port``: the
    launcher's ``RANK``/``WORLD_SIZE``, and what the framework reads to join (Keras' ``KERAS_DISTRIBUTION_*`` for
    ``jax.distributed.initialize``; TensorFlow's ``TF_CONFIG``, worker ``i`` on ``port + i``)."""
    env = {"RANK": str(rank), "WORLD_SIZE": str(world)}
    if engine == "keras-jax-multiprocess":
        env.update(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"{host}:{port}", KERAS_DISTRIBUTION_NUM_PROCESSES=str(world),
                   KERAS_DISTRIBUTION_PROCESS_ID=str(rank))
    elif engine == "keras-tf-multiworker":
        cluster = {"worker": [f"{host}:{port + i}" for i in range(world)]}
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": rank}})
    else:
        raise ValueError(f"{engine!r} does not run one process per rank of ours; choose from {sorted(PROCESS_ENGINES)}")
    return env


def launch_command(engine: str, world: int, module_args: Sequence[str]) -> list[str]:
    """The command running ``python -m <module_args>`` as ``world`` ranks of ``engine``: torchrun's launcher
    (``torch.distributed.run``, one process per rank) for PyTorch, one process for Keras (its replicas are
    devices of that process; ``run_processes`` starts it once per rank for the ``PROCESS_ENGINES``)."""
    if engine in TORCH_ENGINES and world > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--standalone",
                "--tee", "3", "-m", *module_args]  # --tee: each rank's lines prefixed [default<rank>]:
    return [sys.executable, "-m", *module_args]


def failed_rank(output: str) -> int | None:
    """The rank torchrun reports as the first failure in its error summary (``rank : N``), or None."""
    found = re.search(r"Root Cause.*?rank\s*:\s*(\d+)", output, re.S) or re.search(r"rank\s*:\s*(\d+)", output)
    return int(found.group(1)) if found else None


def launch_error(engine: str, world: int, returncode: int, output: str, command: Sequence[str],
                 rank: int | None = None) -> RuntimeError:
    """The error a failed data-parallel launch raises: the failing rank (``rank``, else from torchrun's summary)
    and the tail of its output."""
    if rank is None and engine in TORCH_ENGINES and world > 1:
        rank = failed_rank(output)
    who = f"rank {rank} of {world}" if rank is not None else f"the {engine} run ({world} replica(s))"
    lines = output.strip().splitlines()
    own = [line for line in lines if line.startswith(f"[default{rank}]:")][-10:]  # the failed rank's last lines
    tail = "\n".join(own + [line for line in lines[-15:] if line not in own])
    return RuntimeError(f"data-parallel training failed: {who} exited with an error (exit status {returncode}); "
                        f"command: {shlex.join(command)}\n{tail}")


def run_processes(engine: str, world: int, command: Sequence[str], env: Mapping[str, str],
                  timeout: float | None = None) -> str:
    """Run ``command`` as ``world`` processes of ``engine`` on this host, rank ``r`` with ``rank_env``; their
    output, each line prefixed ``[default<r>]:`` as torchrun does. When one rank fails the others are stopped
    (they would wait for it in a collective) and ``RuntimeError`` names the first that failed."""
    host, port = coordinator(env, world if engine == "keras-tf-multiworker" else 1)  # a port per TF worker
    with tempfile.TemporaryDirectory(prefix="llmdual-ranks-") as tmp:
        logs = [open(Path(tmp) / f"rank{r}.log", "w+") for r in range(world)]
        procs = [subprocess.Popen(command, env={**env, **rank_env(engine, r, world, host, port)}, stdout=log,
                                  stderr=subprocess.STDOUT, text=True) for r, log in enumerate(logs)]
        deadline = None if timeout is None else time.monotonic() + timeout
        failed = None
        try:
            while failed is None and any(p.poll() is None for p in procs):
                failed = next((r for r, p in enumerate(procs) if p.poll() not in (None, 0)), None)
                if deadline is not None and time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(command, timeout)
                time.sleep(0.1)
            if failed is None:  # every rank has exited; the first non-zero status, if any
                failed = next((r for r, p in enumerate(procs) if p.returncode != 0), None)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        output = ""
        for r, log in enumerate(logs):
            log.seek(0)
            output += "".join(f"[default{r}]:{line}" for line in log.read().splitlines(keepends=True))
            log.close()
    if failed is not None:
        raise launch_error(engine, world, procs[failed].returncode, output, command, rank=failed)
    return output


def run_launched(engine: str, world: int, module_args: Sequence[str], threads: int | None = None,
                 environ: Mapping[str, str] | None = None, timeout: float | None = None) -> str:
    """Run ``python -m <module_args>`` as ``world`` ranks of ``engine`` in fresh processes (``launch_command``,
    ``engine_env``; ``run_processes`` for the engines we launch one process per rank); their output, or
    ``RuntimeError`` naming the rank that failed (``launch_error``)."""
    command = launch_command(engine, world, module_args)
    env = {**os.environ, **engine_env(engine, world, threads), **(environ or {})}
    if engine in PROCESS_ENGINES and world > 1:
        return run_processes(engine, world, command, env, timeout)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise launch_error(engine, world, done.returncode, done.stdout, command)
    return done.stdout
