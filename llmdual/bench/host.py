"""How busy the host was around a case, read from ``/proc`` without any framework: the load average, CPU steal, the
share of this process's CPUs that other processes used, the clock, and a fixed numpy calibration probe whose
slowdown betrays contention the counters miss. The worker records them per case; ``report.hostload`` judges them."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TICK_S = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
# The calibration probe: a float64 matmul of this side (~0.1 GFLOP, a few ms on 2 cores), its median over the
# repeats: the median, not the best, because contention shows in the typical call.
PROBE_SIDE = 384
PROBE_REPEATS = 15


@dataclass(frozen=True)
class Snapshot:
    """Counters at one instant: CPU ticks of this process's CPUs (total, idle, steal), the CPU seconds of every
    process in this session (the worker and anything it started), the 1-minute load, the clock in MHz."""

    total: int
    idle: int
    steal: int
    session_cpu_s: float
    load1: float | None
    cpu_mhz: float | None


def _cpus() -> set[int] | None:
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def cpu_ticks(stat: str | Path = "/proc/stat", cpus: set[int] | None = None) -> tuple[int, int, int]:
    """Ticks (total, idle incl. iowait, steal) summed over ``cpus`` (all when None) from ``/proc/stat``; zeros
    where it cannot be read."""
    total = idle = steal = 0
    try:
        lines = Path(stat).read_text().splitlines()
    except OSError:
        return 0, 0, 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
            continue
        ticks = [int(v) for v in fields[:8]] + [0] * max(0, 8 - len(fields))
        total += sum(ticks)  # user nice system idle iowait irq softirq steal (guest time is inside user)
        idle += ticks[3] + ticks[4]
        steal += ticks[7]
    return total, idle, steal


def session_cpu_s(session: int | None = None, proc: str | Path = "/proc") -> float:
    """CPU seconds used by every live process of ``session`` (this one's by default) and its reaped children."""
    session = os.getsid(0) if session is None else session
    used = 0
    for entry in Path(proc).iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # it ended in between
            continue
        if int(fields[3]) == session:  # fields after the name: state ppid pgrp session ...
            used += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return used * TICK_S


def cpu_mhz(cpuinfo: str | Path = "/proc/cpuinfo", sysfs: str | Path = "/sys/devices/system/cpu") -> float | None:
    """The mean current clock of the CPUs in MHz (cpufreq, else ``/proc/cpuinfo``), or None where neither says."""
    found = []
    for path in Path(sysfs).glob("cpu[0-9]*/cpufreq/scaling_cur_freq"):
        try:
            found.append(int(path.read_text()) / 1000)
        except (OSError, ValueError):
            continue
    if not found:
        try:
            found = [float(line.partition(":")[2]) for line in Path(cpuinfo).read_text().splitlines()
                     if line.startswith("cpu MHz")]
        except (OSError, ValueError):
            found = []
    return round(statistics.fmean(found), 1) if found else None


def snapshot() -> Snapshot:
    """The counters now, over the CPUs this process may run on."""
    total, idle, steal = cpu_ticks(cpus=_cpus())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return Snapshot(total, idle, steal, session_cpu_s(), load, cpu_mhz())


def between(start: Snapshot, end: Snapshot) -> dict[str, float | None]:
    """What the host did between two snapshots, as record scalars: the share of our CPUs' time that other
    processes used (``host_others``) and that the hypervisor stole (``host_steal``), the highest 1-minute load, the
    clock; None for what could not be read."""
    ticks = end.total - start.total
    if ticks <= 0:
        return {"host_others": None, "host_steal": None, "host_load1": end.load1, "host_cpu_mhz": end.cpu_mhz}
    busy = ticks - (end.idle - start.idle) - (end.steal - start.steal)
    ours = (end.session_cpu_s - start.session_cpu_s) / TICK_S
    loads = [v for v in (start.load1, end.load1) if v is not None]
    return {"host_others": round(min(1.0, max(0.0, (busy - ours) / ticks)), 4),
            "host_steal": round((end.steal - start.steal) / ticks, 4),
            "host_load1": max(loads) if loads else None, "host_cpu_mhz": end.cpu_mhz}


def calibrate(side: int = PROBE_SIDE, repeats: int = PROBE_REPEATS) -> float:
    """Median seconds of a fixed float64 ``side x side`` numpy matmul: the same work in every worker, so a probe much
    slower than the run's others says that worker shared its CPUs."""
    a = np.random.default_rng(0).standard_normal((side, side))
    a @ a  # the first call pays for BLAS start-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - started)
    return statistics.median(times)
