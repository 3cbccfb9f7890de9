"""Capture the environment a benchmark ran in, without importing any framework (versions come from metadata)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmdual.bench.engines.table import ENGINES

# numpy, then every module an engine imports (frameworks, the libraries they run on, exporters, references)
PACKAGES = ("numpy", *dict.fromkeys(module for engine in ENGINES.values() for module in engine.modules))

# Other distribution names that install the same import package (the ``keras`` extra uses tensorflow-cpu).
_ALIASES = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (``None`` when absent), read from distribution metadata only."""
    versions: dict[str, str | None] = {}
    for name in names:
        versions[name] = None
        for dist in _ALIASES.get(name, (name,)):
            try:
                versions[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """A process's resident high-water mark (``VmHWM`` of ``/proc/<pid>/status``) in MB, or None without
    ``/proc``. Not ``ru_maxrss``, which on Linux inherits the parent's peak across fork and exec."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """CPU model name from ``/proc/cpuinfo`` (Linux), else whatever :mod:`platform` knows."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def bf16_features(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The CPU's native bf16 instruction sets (``amx_bf16``, ``avx512_bf16``), from ``/proc/cpuinfo``."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return []
    flags = next((line.partition(":")[2].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in ("amx_bf16", "avx512_bf16") if f in flags]


def memory_gb(meminfo: str | Path = "/proc/meminfo") -> float | None:
    """Total RAM in GiB from ``/proc/meminfo``, or ``None`` where that file does not exist."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def parse_gpu_csv(text: str) -> list[dict[str, str]]:
    """GPUs from ``nvidia-smi --query-gpu=name,driver_version --format=csv,noheader`` output."""
    gpus = []
    for line in text.splitlines():
        name, sep, driver = line.rpartition(",")
        if sep and name.strip():
            gpus.append({"name": name.strip(), "driver": driver.strip()})
    return gpus


def gpus(timeout_s: float = 15.0) -> list[dict[str, str]]:
    """Name and driver of each NVIDIA GPU; empty when ``nvidia-smi`` is absent or fails (CPU machines)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        done = subprocess.run(
            [exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_gpu_csv(done.stdout) if done.returncode == 0 else []


def _jsonable(value: Any) -> Any:
    """Flags as JSON values: containers kept, paths and other objects as strings."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def capture(threads: int | None = None, flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``env`` block of a results document: interpreter, OS, CPU, memory, GPUs, package versions, flags."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "cpu_bf16": bf16_features(),
        "threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "memory_gb": memory_gb(),
        "gpus": gpus(),
        "packages": package_versions(),
        "flags": _jsonable(dict(flags or {})),
    }
