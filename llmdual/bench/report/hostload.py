"""Whether the host was busy while a case ran, judged from what the worker recorded around it (``llmdual.bench.host``):
a case measured on a busy host cannot support a win, so the verdict withholds every comparison it is part of."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

# The share of the engine's CPUs that other processes (or the hypervisor, as steal) may take before a case counts as
# measured on a busy host. A case that loses a share f of its CPUs runs at least 1/(1-f) slower, and more when a
# parallel op waits for its preempted thread: at 0.10 that is already 1.11x, the size of the smallest lead a win
# needs (verdict.MARGINS: 1.10x memory, 1.15x throughput), so above it a lead may be the load's and not the engine's.
OTHERS_MAX = 0.10
STEAL_MAX = 0.10
# How much slower than the run's median calibration probe a case's probe may run. The probe (a fixed few-ms numpy
# matmul, its median of 15) is bimodal: on a 2-core machine beside one busy process it read 14-16 ms against 0.8 ms
# with the cores free, because a BLAS thread waits out the other process's time slice; 1.5x sits far below that
# jump and well above what clocks and memory placement move between fresh quiet processes.
PROBE_SLOWER_MAX = 1.5


@dataclass(frozen=True)
class HostLoad:
    """The run's host readings: the median probe, each busy case's reason (by case index), and one line of what
    was seen over the whole run (empty for documents recorded without host readings)."""

    median_probe_s: float | None
    busy: dict[int, str] = field(default_factory=dict)
    seen: str = ""


def _readings(doc: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(case index, scalars) of every round that recorded host readings."""
    return [(i, run["scalars"]) for i, case in enumerate(doc["cases"]) for run in case.get("runs", [])
            if "host_others" in (run.get("scalars") or {}) or "calibration_s" in (run.get("scalars") or {})]


def _values(readings: list[tuple[int, dict[str, Any]]], key: str) -> list[float]:
    return [s[key] for _, s in readings if isinstance(s.get(key), (int, float))]


def measured(doc: dict[str, Any]) -> set[int]:
    """The cases (by index) that recorded host readings."""
    return {index for index, _ in _readings(doc)}


def round_reasons(scalars: dict[str, Any], median_probe_s: float | None) -> list[str]:
    """Why one round's readings count as a busy host (empty: they do not)."""
    why = []
    if (scalars.get("host_others") or 0) > OTHERS_MAX:
        why.append(f"other processes used {scalars['host_others']:.0%} of its CPUs")
    if (scalars.get("host_steal") or 0) > STEAL_MAX:
        why.append(f"the hypervisor stole {scalars['host_steal']:.0%} of its CPU time")
    probe = scalars.get("calibration_s")
    if median_probe_s and isinstance(probe, (int, float)) and probe > PROBE_SLOWER_MAX * median_probe_s:
        why.append(f"its calibration probe ran {probe / median_probe_s:.1f}× slower than the run's median")
    return why


def assess(doc: dict[str, Any]) -> HostLoad:
    """Judge every case of a results document: busy when any of its rounds was (see the thresholds above)."""
    readings = _readings(doc)
    if not readings:
        return HostLoad(None)
    probes = _values(readings, "calibration_s")
    median_probe = statistics.median(probes) if probes else None
    busy: dict[int, str] = {}
    for index, scalars in readings:
        why = round_reasons(scalars, median_probe)
        if why and index not in busy:
            case = doc["cases"][index]
            busy[index] = f"{case['engine']} {case['workload']} ({'; '.join(why)})"
    return HostLoad(median_probe, busy, _seen(readings, median_probe))


def _seen(readings: list[tuple[int, dict[str, Any]]], median_probe: float | None) -> str:
    """What the host did over the run, in one line."""
    parts = []
    others = _values(readings, "host_others")
    if others:
        parts.append(f"other processes used {statistics.median(others):.0%} of the engines' CPUs "
                     f"(median over cases; up to {max(others):.0%})")
    steal = _values(readings, "host_steal")
    if steal and max(steal) >= 0.005:  # shown once it rounds to 1%
        parts.append(f"CPU steal up to {max(steal):.0%}")
    load = _values(readings, "host_load1")
    if load:
        parts.append(f"1-minute load {min(load):.1f}–{max(load):.1f}")
    if median_probe:
        slowest = max(_values(readings, "calibration_s"))
        parts.append(f"calibration probe {median_probe * 1e3:.2g} ms median, slowest {slowest / median_probe:.1f}×")
    mhz = _values(readings, "host_cpu_mhz")
    if mhz:
        parts.append(f"clock {min(mhz):.0f}–{max(mhz):.0f} MHz")
    return "; ".join(parts)
