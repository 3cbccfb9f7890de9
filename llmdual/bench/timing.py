"""The one timing helper: warm-up then timed calls, greedy generation (streamed with its clock readings, or
looped whole by the engine), a matmul probe."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.bench.flops import matmul_flop_rate
from llmdual.core.decoding import greedy

PROBE_SIZE = {"cpu": 1024, "cuda": 8192}  # square matmul side: ~2 GFLOP on a CPU, ~1 TFLOP on a GPU


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, budget_s: float | None = None,
               min_repeats: int = 3, on_timing: Callable[[], Any] | None = None) -> tuple[list[float], float]:
    """Seconds of each of up to ``repeats`` calls after ``warmup`` untimed ones (fewer, but at least
    ``min_repeats``, once the timed calls took ``budget_s``), and the warm-up's seconds; ``on_timing`` is called
    between the two (progress). Every call must return only once its work is done (host values, or the engine
    synchronised)."""
    budget = math.inf if budget_s is None else budget_s
    started = time.perf_counter()
    for _ in range(warmup):
        fn()
    warmup_s = time.perf_counter() - started
    if on_timing is not None:
        on_timing()
    times: list[float] = []
    while len(times) < repeats and (len(times) < min_repeats or sum(times) < budget):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times, warmup_s


@dataclass
class Generation:
    """One greedy generation: tokens (B, new), the prefill's logits (B, V), and its clock readings."""

    tokens: np.ndarray
    first_logits: np.ndarray
    ttft_s: float
    step_s: list[float]
    total_s: float


def streamed(decoder: Any, prompt: np.ndarray, new_tokens: int) -> Generation:
    """Greedy decoding of ``new_tokens`` after an unpadded ``prompt`` (B, T) through an ``llmdual.core.decoding.Decoder``
    one step at a time, as a server streams tokens, timing the prefill (to the first token) and each later step;
    numpy logits mean every reading follows done work."""
    B = len(prompt)
    mask = np.ones_like(prompt)
    tokens = np.zeros((B, new_tokens), dtype=np.int64)
    start = time.perf_counter()
    logits, state = decoder.prefill(prompt, mask, prompt.shape[1] + new_tokens - 1)
    first_logits = logits
    tokens[:, 0] = logits.argmax(-1)
    ttft = time.perf_counter() - start
    steps = []
    for t in range(1, new_tokens):
        began = time.perf_counter()
        mask = np.concatenate([mask, np.ones((B, 1), dtype=mask.dtype)], axis=1)
        logits, state = decoder.step(tokens[:, t - 1 : t], mask, state)
        tokens[:, t] = logits.argmax(-1)
        steps.append(time.perf_counter() - began)
    return Generation(tokens, np.asarray(first_logits, np.float32), ttft, steps, time.perf_counter() - start)


def looped(decoder: Any, prompt: np.ndarray, new_tokens: int) -> tuple[np.ndarray, float]:
    """Greedy tokens (B, new_tokens) after an unpadded ``prompt`` by ``llmdual.core.decoding.greedy`` (the engine's own
    loop where it has one), and the seconds they took."""
    started = time.perf_counter()
    tokens = greedy(decoder, prompt, np.ones_like(prompt), new_tokens)
    return tokens, time.perf_counter() - started


def probe(matmul: Callable[[], Any], n: int, repeats: int = 10) -> float:
    """Peak FLOP/s of a synchronised ``n x n`` matmul: the fastest of ``repeats`` calls after two warm-ups."""
    times, _ = time_calls(matmul, 2, repeats)
    return matmul_flop_rate(n, min(times))


def reset_peak_rss() -> None:
    """Restart ``VmHWM`` from the current RSS (Linux ``clear_refs`` 5), so a case sharing its process with earlier
    ones reports its own peak; a no-op where unsupported."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
