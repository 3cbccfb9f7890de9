"""The sampling step shared by both backends' generation: numpy logits in, next token ids out, seeded."""

from __future__ import annotations

import numpy as np


def check_args(temperature: float | None, top_k: int | None, top_p: float | None) -> None:
    """Raise ``ValueError`` naming the argument that is out of range and what is allowed."""
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0
        or not np.isfinite(temperature)
    ):
        raise ValueError(f"temperature must be a finite number >= 0 (0 or None: greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1
    ):
        raise ValueError(f"top_p must be a number in (0, 1] or None, got {top_p!r}")


def sample_next(
    logits: np.ndarray,
    temperature: float | None = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Next token ids, int64 ``[B]``, drawn from ``logits`` ``[B, V]`` (computed in float64).

    ``temperature`` 0 or ``None`` is greedy argmax (lowest id on ties). Otherwise the logits are divided by
    ``temperature``, then ``top_k`` keeps the ``k`` largest (exactly ``k``; ties go to the lower id), then
    ``top_p`` keeps the smallest most-probable set whose probability reaches ``top_p`` (at least one token),
    and one token per row is drawn from the renormalized rest. ``rng`` is a Generator or an int seed; the same
    seed and logits give the same tokens. ``-inf`` logits mark forbidden tokens.
    """
    check_args(temperature, top_k, top_p)
    z = np.asarray(logits)
    real = np.issubdtype(z.dtype, np.floating) or (np.issubdtype(z.dtype, np.integer) and z.dtype != np.bool_)
    if z.ndim != 2 or z.shape[1] == 0 or not real:
        raise ValueError(f"logits must be a real array of shape (batch, vocab) with vocab >= 1, "
                         f"got shape {z.shape} dtype {z.dtype}")
    z = z.astype(np.float64)
    if np.isnan(z).any() or np.isposinf(z).any():
        raise ValueError("logits must not contain NaN or +inf (use -inf to forbid a token)")
    if z.size and np.isneginf(z).all(axis=1).any():
        raise ValueError("every row of logits needs at least one finite value; a row is all -inf")
    if not temperature:
        return z.argmax(axis=1).astype(np.int64)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    order = np.argsort(-z, axis=1, kind="stable")  # descending, ties to the lower id
    z = np.take_along_axis(z, order, axis=1)
    z = (z - z[:, :1]) / temperature  # shift first so tiny temperatures cannot overflow
    if top_k is not None:
        z[:, top_k:] = -np.inf
    probs = np.exp(z)
    cum = np.cumsum(probs, axis=1)
    if top_p is not None:
        before = cum - probs  # probability mass of the more likely tokens
        probs = np.where(before < top_p * cum[:, -1:], probs, 0.0)
        cum = np.cumsum(probs, axis=1)
    target = rng.random(len(z))[:, None] * cum[:, -1:]
    index = (cum < target).sum(axis=1)  # first position whose cumulative mass reaches the target
    return np.take_along_axis(order, index[:, None], axis=1)[:, 0].astype(np.int64)
