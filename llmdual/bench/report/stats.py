"""Robust statistics for repeated timings: median, IQR, percentiles and seeded bootstrap intervals.

Everything takes plain sequences (or arrays) of finite floats. Intervals are percentile-bootstrap intervals
of the median, so they make no normality assumption; a comparison of two engines is the ratio of their
medians with a bootstrap interval of that ratio, and it is *within noise* when that interval contains 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Values = Sequence[float] | np.ndarray

# Largest number of resampled values held at once while bootstrapping (keeps memory flat for long samples).
_CHUNK_ELEMENTS = 2_000_000


def sample(values: Values) -> np.ndarray:
    """The values as a 1-D float array; ``ValueError`` if empty or not all finite (bad data fails loudly)."""
    array = np.asarray(values, dtype=float).ravel()
    if array.size == 0:
        raise ValueError("need at least one value")
    if not np.all(np.isfinite(array)):
        raise ValueError("values must all be finite numbers")
    return array


def median(values: Values) -> float:
    """Median, the central figure reported for every metric (insensitive to stray slow repeats)."""
    return float(np.median(sample(values)))


def percentile(values: Values, q: float) -> float:
    """The ``q``-th percentile (0..100, linear interpolation), e.g. p99 of per-token latency."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    return float(np.percentile(sample(values), q))


def percentiles(values: Values, qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """Several percentiles keyed ``p50``, ``p90``, ... for tables and JSON."""
    return {f"p{q:g}": percentile(values, q) for q in qs}


def iqr(values: Values) -> float:
    """Inter-quartile range (p75 - p25), the spread shown next to a median."""
    array = sample(values)
    return float(np.percentile(array, 75) - np.percentile(array, 25))


def _check(confidence: float, n_boot: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")


def _boot_medians(array: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of ``n_boot`` resamples with replacement, drawn in chunks to bound memory."""
    rows = max(1, _CHUNK_ELEMENTS // array.size)
    out = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, array.size, size=(stop - start, array.size))
        out[start:stop] = np.median(array[idx], axis=1)
    return out


def _interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_median_ci(
    values: Values, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median; seeded so a report is reproducible."""
    _check(confidence, n_boot)
    array = sample(values)
    return _interval(_boot_medians(array, n_boot, np.random.default_rng(seed)), confidence)


@dataclass(frozen=True)
class Ratio:
    """``median(a) / median(b)`` with its bootstrap interval ``[low, high]``."""

    ratio: float
    low: float
    high: float

    @property
    def within_noise(self) -> bool:
        """True when the interval contains 1, i.e. the data cannot tell the two apart."""
        return self.low <= 1.0 <= self.high


def ratio_of_medians(
    a: Values, b: Values, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Ratio:
    """Ratio of the two medians with a bootstrap interval (both samples resampled independently)."""
    _check(confidence, n_boot)
    x, y = sample(a), sample(b)
    if np.any(y <= 0) or np.any(x < 0):
        raise ValueError("ratio of medians needs non-negative numerators and positive denominators")
    rng = np.random.default_rng(seed)
    draws = _boot_medians(x, n_boot, rng) / _boot_medians(y, n_boot, rng)
    low, high = _interval(draws, confidence)
    return Ratio(float(np.median(x) / np.median(y)), low, high)


def within_noise(a: Values, b: Values, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> bool:
    """Whether two samples are indistinguishable: the ratio-of-medians interval contains 1."""
    return ratio_of_medians(a, b, confidence, n_boot, seed).within_noise


def summarize(values: Values, confidence: float = 0.95, seed: int = 0) -> dict[str, float | int]:
    """The derived figures stored with each metric: n, median, spread, extremes, p50/p90/p99, CI."""
    array = sample(values)
    low, high = bootstrap_median_ci(array, confidence, seed=seed)
    return {
        "n": int(array.size),
        "median": median(array),
        "mean": float(array.mean()),
        "min": float(array.min()),
        "max": float(array.max()),
        "iqr": iqr(array),
        **percentiles(array),
        "ci_low": low,
        "ci_high": high,
    }
