"""Data-parallel launchers: how each framework's distributed engine starts its ranks (torchrun for PyTorch, one
process per rank that we start for the multi-process Keras launchers), and the environment each rank gets. The shard
plan the ranks follow is ``llmdual.core.shard``'s."""

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

from llmdual.core.shard import TORCH_DP

# The launchers: (backend, Keras backend or None, what runs the ranks)
LAUNCHERS: dict[str, tuple[str, str | None, str]] = {
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
# The PyTorch launchers (torchrun), and the data parallelism (``TORCH_DP``) each wraps the model in
TORCH_LAUNCHERS = {"torch-ddp": "ddp", "torch-fsdp": "fsdp"}
# Launchers running one process per rank that we start ourselves (JAX and TensorFlow have no launcher), on this host,
# and the one-process launcher each equals on one rank
PROCESS_LAUNCHERS = {"keras-jax-multiprocess": "keras-jax", "keras-tf-multiworker": "keras-tf"}
# Where the processes of a PROCESS_LAUNCHERS run meet: host:port of rank 0 (TensorFlow's workers take the next ports);
# default 127.0.0.1 and a free port
COORDINATOR = "LLMDUAL_COORDINATOR"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(threads: int, world: int) -> int:
    """CPU threads each of ``world`` workers gets so that together they use ``threads`` (at least 1 each)."""
    return max(1, threads // world)


def launcher_env(launcher: str, world: int, threads: int | None = None) -> dict[str, str]:
    """Environment variables a fresh process needs to run ``launcher`` with ``world`` replicas on CPU: the Keras
    backend, JAX's virtual host devices (read only when JAX starts; one per process of a multi-process run), the
    PyTorch wrapper (``LLMDUAL_TORCH_DP``), and ``threads`` per worker (split between the processes of a
    one-process-per-rank launcher)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown data-parallel launcher {launcher!r}; choose from {sorted(LAUNCHERS)}")
    _, keras_backend, _ = LAUNCHERS[launcher]
    env = {"TF_CPP_MIN_LOG_LEVEL": "3"}
    if keras_backend:
        env["KERAS_BACKEND"] = keras_backend
    if launcher in TORCH_LAUNCHERS:
        env[TORCH_DP] = TORCH_LAUNCHERS[launcher]
    if keras_backend == "jax":
        devices = 1 if launcher in PROCESS_LAUNCHERS else world
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
        # XLA:CPU runs every device's program on one thread pool (PJRT_NPROC threads, default: the cores); the
        # all-reduce between 2 devices of one process never completes with 2 or 3 threads (small preset), with 4 it does
        env["PJRT_NPROC"] = str(max(threads or usable_cores(), 2 * devices))
    if threads is not None:
        split = launcher in TORCH_LAUNCHERS or launcher in PROCESS_LAUNCHERS
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


def rank_env(launcher: str, rank: int, world: int, host: str, port: int) -> dict[str, str]:
    """The environment of rank ``rank`` of a ``world``-process run of ``launcher`` meeting at ``host:port``: the
    launcher's ``RANK``/``WORLD_SIZE``, and what the framework reads to join (Keras' ``KERAS_DISTRIBUTION_*`` for
    ``jax.distributed.initialize``; TensorFlow's ``TF_CONFIG``, worker ``i`` on ``port + i``)."""
    env = {"RANK": str(rank), "WORLD_SIZE": str(world)}
    if launcher == "keras-jax-multiprocess":
        env.update(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"{host}:{port}", KERAS_DISTRIBUTION_NUM_PROCESSES=str(world),
                   KERAS_DISTRIBUTION_PROCESS_ID=str(rank))
    elif launcher == "keras-tf-multiworker":
        cluster = {"worker": [f"{host}:{port + i}" for i in range(world)]}
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": rank}})
    else:
        raise ValueError(f"{launcher!r} does not run one process per rank of ours; choose from {sorted(PROCESS_LAUNCHERS)}")
    return env


def launch_command(launcher: str, world: int, module_args: Sequence[str]) -> list[str]:
    """The command running ``python -m <module_args>`` as ``world`` ranks of ``launcher``: torchrun's launcher
    (``torch.distributed.run``, one process per rank) for PyTorch, one process for Keras (its replicas are
    devices of that process; ``run_processes`` starts it once per rank for the ``PROCESS_LAUNCHERS``)."""
    if launcher in TORCH_LAUNCHERS and world > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--standalone",
                "--tee", "3", "-m", *module_args]  # --tee: each rank's lines prefixed [default<rank>]:
    return [sys.executable, "-m", *module_args]


def failed_rank(output: str) -> int | None:
    """The rank torchrun reports as the first failure in its error summary (``rank : N``), or None."""
    found = re.search(r"Root Cause.*?rank\s*:\s*(\d+)", output, re.S) or re.search(r"rank\s*:\s*(\d+)", output)
    return int(found.group(1)) if found else None


def launch_error(launcher: str, world: int, returncode: int, output: str, command: Sequence[str],
                 rank: int | None = None) -> RuntimeError:
    """The error a failed data-parallel launch raises: the failing rank (``rank``, else from torchrun's summary)
    and the tail of its output."""
    if rank is None and launcher in TORCH_LAUNCHERS and world > 1:
        rank = failed_rank(output)
    who = f"rank {rank} of {world}" if rank is not None else f"the {launcher} run ({world} replica(s))"
    lines = output.strip().splitlines()
    own = [line for line in lines if line.startswith(f"[default{rank}]:")][-10:]  # the failed rank's last lines
    tail = "\n".join(own + [line for line in lines[-15:] if line not in own])
    return RuntimeError(f"data-parallel training failed: {who} exited with an error (exit status {returncode}); "
                        f"command: {shlex.join(command)}\n{tail}")


def run_processes(launcher: str, world: int, command: Sequence[str], env: Mapping[str, str],
                  timeout: float | None = None) -> str:
    """Run ``command`` as ``world`` processes of ``launcher`` on this host, rank ``r`` with ``rank_env``; their
    output, each line prefixed ``[default<r>]:`` as torchrun does. When one rank fails the others are stopped
    (they would wait for it in a collective) and ``RuntimeError`` names the first that failed."""
    host, port = coordinator(env, world if launcher == "keras-tf-multiworker" else 1)  # a port per TF worker
    with tempfile.TemporaryDirectory(prefix="llmdual-ranks-") as tmp:
        logs = [open(Path(tmp) / f"rank{r}.log", "w+") for r in range(world)]
        procs = [subprocess.Popen(command, env={**env, **rank_env(launcher, r, world, host, port)}, stdout=log,
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
        raise launch_error(launcher, world, procs[failed].returncode, output, command, rank=failed)
    return output


def run_launched(launcher: str, world: int, module_args: Sequence[str], threads: int | None = None,
                 environ: Mapping[str, str] | None = None, timeout: float | None = None) -> str:
    """Run ``python -m <module_args>`` as ``world`` ranks of ``launcher`` in fresh processes (``launch_command``,
    ``launcher_env``; ``run_processes`` for the launchers we start one process per rank); their output, or
    ``RuntimeError`` naming the rank that failed (``launch_error``)."""
    command = launch_command(launcher, world, module_args)
    env = {**os.environ, **launcher_env(launcher, world, threads), **(environ or {})}
    if launcher in PROCESS_LAUNCHERS and world > 1:
        return run_processes(launcher, world, command, env, timeout)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise launch_error(launcher, world, done.returncode, done.stdout, command)
    return done.stdout
