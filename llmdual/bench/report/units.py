"""How benchmark figures read: values with scaled units, metric labels, and the settings that tell points apart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llmdual.bench.report.results import METRICS, POINT_KEYS, Metric


def format_value(value: float | None, unit: str) -> str:
    """A figure with its unit, scaled for reading (seconds as ms/µs, MB as GB, thousands separators)."""
    if value is None:
        return "–"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.3g} µs"
        return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"
    if unit == "MB" and value >= 1024:
        return f"{value / 1024:.2f} GB"
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"


def metric_of(name: str) -> Metric:
    return METRICS.get(name, Metric(name, "", True))


def varying(points: Sequence[dict[str, Any]]) -> list[str]:
    """Point keys whose values differ between the given points (the only ones worth printing)."""
    return [k for k in POINT_KEYS if len({json.dumps(p.get(k)) for p in points}) > 1]


def point_label(point: dict[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k} {point.get(k)}" for k in keys)


def format_flops(value: float) -> str:
    """FLOP/s in the largest unit that keeps the figure >= 1 (GFLOP/s on CPUs, TFLOP/s on GPUs)."""
    return f"{value / 1e12:.3g} TFLOP/s" if value >= 1e12 else f"{value / 1e9:.3g} GFLOP/s"
