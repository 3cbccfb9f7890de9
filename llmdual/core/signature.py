"""The interface every llmdual export has, whichever format and backend wrote it: input and output names with
their dynamic axes, seeded feeds for verification, the shapes verified, and the comparison that fails an export."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from llmdual.core.config import Config

Axes = tuple[str | int, ...]  # per dimension: a dynamic axis name, or a fixed size
Shape = tuple[int, int, int]  # (batch, new tokens, cached tokens) of one verification run


class VerificationError(RuntimeError):
    """An export whose outputs differ from the native model's beyond the tolerance."""


@dataclass(frozen=True)
class Signature:
    """Names and axes of an export's inputs and outputs, in graph order."""

    inputs: dict[str, Axes]
    outputs: dict[str, Axes]
    kv_cache: bool

    def dtype(self, name: str) -> type:
        """Numpy dtype of an input: float32 for the cache, int64 for ids, masks and positions."""
        return np.float32 if name.startswith("past.") else np.int64


def signature(config: Config, task: str, kv_cache: bool = False) -> Signature:
    """The graph interface every llmdual export has, whichever backend produced it."""
    ids: Axes = ("batch", "sequence")
    if task == "classifier":
        if kv_cache:
            raise ValueError("kv_cache=True needs an LM (task 'lm'); a classifier has no decoding cache")
        return Signature({"input_ids": ids, "attention_mask": ids}, {"logits": ("batch", config.num_classes)}, False)
    logits_axes: Axes = ("batch", "sequence", config.vocab_size)
    if not kv_cache:
        return Signature({"input_ids": ids}, {"logits": logits_axes}, False)
    inputs: dict[str, Axes] = {"input_ids": ids, "attention_mask": ("batch", "total_sequence"), "position_ids": ids}
    outputs: dict[str, Axes] = {"logits": logits_axes}
    for i in range(config.n_layers):
        for part in ("key", "value"):
            inputs[f"past.{i}.{part}"] = ("batch", config.kv_heads, "past_sequence", config.head_dim)
            outputs[f"present.{i}.{part}"] = ("batch", config.kv_heads, "total_sequence", config.head_dim)
    return Signature(inputs, outputs, True)


def make_feeds(config: Config, sig: Signature, shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs of ``shape``; masks pad some rows (right for the classifier, left for the cache) as in use."""
    B, T, P = shape
    rng = np.random.default_rng(seed)
    feeds = {"input_ids": rng.integers(0, config.vocab_size, (B, T), dtype=np.int64)}
    if "attention_mask" in sig.inputs and not sig.kv_cache:
        lengths = np.r_[T, rng.integers(1, T + 1, B - 1)]  # row 0 unpadded, the others right-padded
        feeds["attention_mask"] = (np.arange(T)[None] < lengths[:, None]).astype(np.int64)
    if sig.kv_cache:
        pads = np.r_[0, rng.integers(0, P + T, B - 1)]  # left padding, at least one real token per row
        mask = (np.arange(P + T)[None] >= pads[:, None]).astype(np.int64)
        feeds["attention_mask"] = mask
        feeds["position_ids"] = np.maximum(mask.cumsum(axis=1) - 1, 0)[:, P:]
        for name, axes in sig.inputs.items():
            if name.startswith("past."):
                feeds[name] = rng.standard_normal((B, axes[1], P, axes[3]), dtype=np.float32)
    return feeds


def step_feeds(
    config: Config, input_ids: np.ndarray, attention_mask: np.ndarray, past: Sequence[np.ndarray] | None
) -> dict[str, np.ndarray]:
    """Inputs of a KV-cache export: positions from the mask (``cumsum - 1``, so left padding is skipped), and
    ``past`` as ``[k0, v0, k1, v1, ...]`` or None for an empty cache (a prefill)."""
    B, T = input_ids.shape
    if past is None:
        past = [np.zeros((B, config.kv_heads, 0, config.head_dim), np.float32)] * (2 * config.n_layers)
    feeds = {
        "input_ids": np.asarray(input_ids, np.int64),
        "attention_mask": np.asarray(attention_mask, np.int64),
        "position_ids": np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0)[:, -T:].astype(np.int64),
    }
    names = [f"past.{i}.{part}" for i in range(config.n_layers) for part in ("key", "value")]
    return {**feeds, **dict(zip(names, past))}


def default_shapes(config: Config, kv_cache: bool) -> list[Shape]:
    """Verification shapes, all unlike the traced one: the longest sequence, an odd batch, single tokens, and
    for the cache an empty past (prefill), a one-token step on a long past, and a multi-token step."""
    L = config.max_seq_len
    if kv_cache:
        return [(3, min(6, L), 0), (2, 1, min(9, L - 1)), (1, min(4, L // 2), min(5, L - min(4, L // 2)))]
    return [(1, L, 0), (3, min(13, L), 0), (4, 1, 0)]


def shape_label(shape: Shape) -> str:
    """``"BxT"``, or ``"BxT+P"`` with ``P`` cached tokens."""
    B, T, P = shape
    return f"{B}x{T}" + (f"+{P}" if P else "")


def compare(
    names: Sequence[str], got: Sequence[np.ndarray], want: Sequence[np.ndarray], label: str, atol: float, rtol: float
) -> tuple[float, list[str]]:
    """Worst abs difference over the outputs of one shape and what failed ``|got - want| <= atol + rtol * |want|``
    (a wrong shape, or a difference, naming the output and ``label``); NaN fails."""
    worst, failed = [], []
    for name, g, w in zip(names, got, want):
        if g.shape != w.shape:
            failed.append(f"{name} at {label}: shape {g.shape}, native {w.shape}")
            continue
        err = np.abs(np.asarray(g, np.float64) - w)
        worst.append(float(err.max(initial=0.0)))  # NaN propagates, and fails the check below
        if not np.all(err <= atol + rtol * np.abs(w)):
            failed.append(f"{name} at {label}: max abs diff {worst[-1]:.3e}")
    return float(np.max(worst, initial=0.0)), failed


def check_outputs(
    native: Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]], name: str, sig: Signature,
    runs: Sequence[tuple[Shape, dict[str, np.ndarray], Sequence[np.ndarray]]], what: str, atol: float, rtol: float,
) -> dict[str, float]:
    """Max abs difference per shape between an export's outputs (``runs``: shape, feeds, outputs) and the native
    model's (``native``: feeds in, outputs out; ``name``: its backend) on the same feeds; ``VerificationError``
    naming ``what`` and every failure if any is off."""
    diffs, failed = {}, []
    for shape, feeds, got in runs:
        want = native(feeds)
        diffs[shape_label(shape)], off = compare(list(sig.outputs), got, want, shape_label(shape), atol, rtol)
        failed += off
    if failed:
        raise VerificationError(f"{what} does not match the native {name} model (atol {atol:g}, "
                                f"rtol {rtol:g}): " + "; ".join(failed) + f"; max abs diff per shape {diffs}")
    return diffs

