"""Tests for the shared sampling step: greedy, top-k, nucleus, seeding and the sampled distribution."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from llmdual.core.sampling import sample_next

logit_rows = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 4), st.integers(1, 12)),
    elements=st.floats(-30, 30, allow_nan=False, allow_infinity=False),
)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@settings(deadline=None)
@given(logit_rows, st.integers(0, 2**32 - 1))
def test_top_k_one_is_greedy(logits: np.ndarray, seed: int) -> None:
    greedy = sample_next(logits, temperature=0)
    np.testing.assert_array_equal(greedy, logits.argmax(axis=1))
    np.testing.assert_array_equal(sample_next(logits, top_k=1, rng=seed), greedy)
    np.testing.assert_array_equal(sample_next(logits, temperature=None), greedy)


@settings(deadline=None)
@given(logit_rows, st.integers(1, 12), st.floats(0.1, 3.0), st.integers(0, 2**32 - 1))
def test_samples_stay_in_top_k(logits: np.ndarray, k: int, temperature: float, seed: int) -> None:
    ids = sample_next(logits, temperature=temperature, top_k=k, rng=seed)
    assert ids.dtype == np.int64 and ids.shape == (len(logits),)
    for row, i in zip(logits, ids):
        kth_largest = np.sort(row)[::-1][min(k, len(row)) - 1]
        assert row[i] >= kth_largest


@settings(deadline=None)
@given(logit_rows, st.floats(0.01, 1.0), st.integers(0, 2**32 - 1))
def test_samples_stay_in_nucleus(logits: np.ndarray, top_p: float, seed: int) -> None:
    ids = sample_next(logits, top_p=top_p, rng=seed)
    probs = softmax(logits)
    for p, i in zip(probs, ids):
        # the token's more likely rivals hold less than top_p mass, else it would lie outside the nucleus
        more_likely = p[p > p[i]].sum()
        assert more_likely < top_p + 1e-9


@settings(deadline=None)
@given(logit_rows, st.integers(0, 2**32 - 1))
def test_same_seed_same_tokens(logits: np.ndarray, seed: int) -> None:
    a = sample_next(logits, temperature=0.8, top_p=0.9, rng=seed)
    b = sample_next(logits, temperature=0.8, top_p=0.9, rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(a, b)


def test_forbidden_tokens_are_never_drawn() -> None:
    logits = np.array([[0.0, -np.inf, 0.0, -np.inf]] * 2000)
    ids = sample_next(logits, rng=0)
    assert set(ids.tolist()) == {0, 2}


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(temperature=0.5), dict(temperature=2.0), dict(top_k=2), dict(top_p=0.75), dict(top_k=3, top_p=0.9)],
)
def test_sampled_frequencies_match_softmax(kwargs: dict) -> None:
    """Frequencies over N draws match the filtered softmax within 5 standard errors, sqrt(p (1 - p) / N), per
    token: a binomial count that far off has probability below 1e-6, so only a wrong distribution fails."""
    base = np.array([2.0, 1.0, 0.5, 0.0, -1.0])
    n = 200_000
    ids = sample_next(np.tile(base, (n, 1)), rng=1234, **kwargs)
    z = base / kwargs.get("temperature", 1.0)
    order = np.argsort(-z)
    keep = np.zeros(len(z), dtype=bool)
    keep[order[: kwargs.get("top_k", len(z))]] = True
    probs = softmax(np.where(keep, z, -np.inf))
    if "top_p" in kwargs:
        sorted_p = probs[order]
        mass_before = np.cumsum(sorted_p) - sorted_p
        nucleus = order[mass_before < kwargs["top_p"]]
        probs = np.where(np.isin(np.arange(len(z)), nucleus), probs, 0.0)
        probs /= probs.sum()
    freq = np.bincount(ids, minlength=len(z)) / n
    tolerance = 5 * np.sqrt(probs * (1 - probs) / n)
    assert np.all(np.abs(freq - probs) <= tolerance), (freq, probs)


def test_tiny_temperature_is_nearly_greedy_without_overflow() -> None:
    logits = np.array([[1.0, 1.0 + 1e-3, -5.0]])
    ids = sample_next(np.repeat(logits, 100, axis=0), temperature=1e-300, rng=0)
    assert (ids == 1).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.1), "temperature must be"),
        (dict(temperature=float("nan")), "temperature must be"),
        (dict(top_k=0), "top_k must be"),
        (dict(top_k=1.5), "top_k must be"),
        (dict(top_p=0.0), "top_p must be"),
        (dict(top_p=1.5), "top_p must be"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample_next(np.zeros((1, 3)), **kwargs)


@pytest.mark.parametrize(
    "logits, message",
    [
        (np.zeros(3), "shape \\(batch, vocab\\)"),
        (np.zeros((2, 0)), "vocab >= 1"),
        (np.array([[0.0, np.nan]]), "NaN"),
        (np.array([[0.0, np.inf]]), "\\+inf"),
        (np.array([[0.0, 1.0], [-np.inf, -np.inf]]), "all -inf"),
    ],
)
def test_bad_logits_raise(logits: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample_next(logits, rng=0)
