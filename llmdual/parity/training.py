"""Parity of training and generation between the backends: the checks ``llmdual.parity`` adds to its model checks.

Each check trains fresh models (never the context's shared ones) on the same seeded batches with dropout 0 in
fp32: per-step losses for every pair of backends that train, gradient accumulation against one larger batch,
resuming from a mid-run run state (in the same backend and in every other one) against the uninterrupted run, and
greedy generation with and without the KV cache.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.api import build, get_weights
from llmdual.core.recipe import Batch, BatchFn, History, TrainConfig
from llmdual.generate import generate
from llmdual.parity.core import Check, ParityContext, pairs, peers
from llmdual.training import run_state_prefix, train

# Per-step loss, between two backends, relative: kernels round differently (~1e-7 per op) and AdamW's normalised
# updates carry that into the weights, so losses drift apart slowly; 1e-4 over 20 steps is the bound.
LOSS_RTOL = 1e-4
# Final weights by canonical name, max |w_a - w_b|, as a fraction of the farthest AdamW can move a weight in
# the run (~lr per step: the sum of the learning rates). AdamW normalises every update, so where a gradient is
# ~0 (rare embedding rows) its rounding noise moves the weight as far as a real gradient would; measured up to
# ~0.2% on `small`. Relative to a tensor's own scale this would punish biases, which start at 0.
WEIGHT_TRAVEL_FRACTION = 1e-2
# The global gradient norm, per step, relative: a sum of squares dominated by the largest entries, so it
# amplifies the weights' drift (see above) more than the loss does; observed up to ~3e-4 on `small`.
GRAD_NORM_RTOL = 1e-3
STEPS = 20
GENERATED_TOKENS = 32


def train_config(steps: int = STEPS, **changes: Any) -> TrainConfig:
    """The recipe the checks use: warmup, cosine decay, clipping that binds, decay on matrices, no progress bar."""
    base = TrainConfig(steps=steps, batch_size=4, lr=1e-3, min_lr=1e-4, warmup_steps=5, grad_clip=0.5,
                       weight_decay=0.1, eps=1e-8, seed=0, progress=False)
    return dataclasses.replace(base, **changes)


def batches(ctx: ParityContext, batch_size: int) -> BatchFn:
    """Seeded batches for ``ctx.task``: LM ``(x, y)`` over a learnable pattern, classifier ``(ids, mask, labels)``
    with ragged padding and labels that depend on the tokens."""
    config = ctx.config
    seq_len = ctx.seq_len or min(config.max_seq_len, 32)

    def get_batch(step: int) -> Batch:
        rng = np.random.default_rng([ctx.seed, step])
        if ctx.task == "lm":
            start = rng.integers(0, config.vocab_size, (batch_size, 1))
            stride = rng.integers(1, 4, (batch_size, 1))
            tokens = (start + stride * np.arange(seq_len + 1)) % config.vocab_size
            return tokens[:, :-1].astype(np.int64), tokens[:, 1:].astype(np.int64)
        ids = rng.integers(0, config.vocab_size, (batch_size, seq_len), dtype=np.int64)
        lengths = rng.integers(max(1, seq_len // 3), seq_len + 1, batch_size)
        mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int64)
        return ids, mask, (ids[:, 0] % config.num_classes).astype(np.int64)

    return get_batch


def run(ctx: ParityContext, backend: str, cfg: TrainConfig, resume: str | Path | None = None,
        get_batch: BatchFn | None = None) -> tuple[History, dict[str, np.ndarray]]:
    """Train a fresh model of ``backend`` from ``ctx``'s seed; its history and final canonical weights."""
    model = build(ctx.config, backend, ctx.task, ctx.seed)
    history = train(model, get_batch or batches(ctx, cfg.batch_size), cfg, resume=resume)
    return history, get_weights(model)


def compare_runs(name: str, reference: tuple[History, dict], other: tuple[History, dict],
                 loss_rtol: float = LOSS_RTOL) -> list[Check]:
    """Per-step loss (relative) and final weights (absolute, bound by ``WEIGHT_TRAVEL_FRACTION``; the worst
    tensor's figure relative to its scale reported) of two runs."""
    (ha, wa), (hb, wb) = reference, other
    a, b = np.asarray(ha.loss, np.float64), np.asarray(hb.loss, np.float64)
    if a.shape != b.shape:
        return [Check(f"{name}: losses", float("inf"), float("inf"), loss_rtol, False,
                      f"{len(a)} vs {len(b)} steps")]
    loss_abs = float(np.abs(a - b).max())
    loss_rel = float((np.abs(a - b) / np.abs(a)).max())
    weight_atol = WEIGHT_TRAVEL_FRACTION * float(np.sum(ha.lr))
    worst, worst_rel, worst_abs = "", 0.0, 0.0
    for key in wa:
        diff = float(np.abs(wa[key].astype(np.float64) - wb[key]).max())
        if diff >= worst_abs:
            worst, worst_abs, worst_rel = key, diff, diff / max(float(np.abs(wa[key]).max()), 1e-30)
    return [
        Check(f"{name}: per-step loss ({len(a)} steps)", loss_abs, loss_rel, loss_rtol, loss_rel <= loss_rtol,
              f"final {a[-1]:.5f} vs {b[-1]:.5f}"),
        Check(f"{name}: final weights (worst tensor)", worst_abs, worst_rel, weight_atol, worst_abs <= weight_atol,
              f"{len(wa)} tensors; worst {worst}"),
    ]


def check_trajectory(ctx: ParityContext, cfg: TrainConfig | None = None) -> list[Check]:
    """Same seed, same batches: every pair of backends that train follows the same loss curve to the same weights."""
    cfg = cfg or train_config()
    runs = {b: run(ctx, b, cfg) for b in peers("training")}
    checks = []
    for a, b in pairs("training"):
        name = f"trajectory {a} vs {b}"
        checks += compare_runs(name, runs[a], runs[b])
        lr_same = runs[a][0].lr == runs[b][0].lr
        checks.append(Check(f"{name}: learning-rate schedule", 0.0 if lr_same else float("inf"), 0.0, 0.0, lr_same,
                            f"warmup {cfg.warmup_steps}, cosine {cfg.lr:g} -> {cfg.min_lr:g}"))
        norms_a, norms_b = np.asarray(runs[a][0].grad_norm), np.asarray(runs[b][0].grad_norm)
        clipped = int((norms_a > cfg.grad_clip).sum())
        rel = float((np.abs(norms_a - norms_b) / norms_a).max())
        checks.append(Check(f"{name}: pre-clip gradient norms", float(np.abs(norms_a - norms_b).max()), rel,
                            GRAD_NORM_RTOL, rel <= GRAD_NORM_RTOL,
                            f"clipped at {cfg.grad_clip} on {clipped}/{len(norms_a)} steps"))
    return checks


def check_accumulation(ctx: ParityContext) -> list[Check]:
    """In each backend, k=2 micro-batches per step equal one batch twice as large."""
    checks = []
    for backend in peers("training"):
        whole = run(ctx, backend, train_config(steps=4, batch_size=4))
        accumulated = run(ctx, backend, train_config(steps=4, batch_size=4, grad_accum=2))
        checks += compare_runs(f"grad accumulation 2x2 vs 1x4 [{backend}]", whole, accumulated)
    return checks


def check_resume(ctx: ParityContext) -> list[Check]:
    """Resuming from a mid-run run state (weights, AdamW moments, step) reproduces the uninterrupted run, in
    the backend that wrote it and in every other one that trains."""
    names, checks = peers("training"), []
    with tempfile.TemporaryDirectory() as tmp:
        uninterrupted = {}
        for backend in names:
            cfg = train_config(steps=6, checkpoint_dir=str(Path(tmp) / backend), checkpoint_interval=3)
            uninterrupted[backend] = run(ctx, backend, cfg)
        for writer, reader in [(b, b) for b in names] + list(permutations(names, 2)):
            resumed = run(ctx, reader, train_config(steps=6), resume=run_state_prefix(Path(tmp) / writer, 3))
            checks += compare_runs(f"resume at step 3: {writer} run state -> {reader}", uninterrupted[reader], resumed)
    return checks


def check_generation(ctx: ParityContext) -> list[Check]:
    """LM only: greedy tokens identical in every backend that decodes, with and without the KV cache (the first
    backend's cached decoding the one they are held to: equality is transitive)."""
    names = peers("decoding")
    if ctx.task != "lm" or not names:
        return []
    ids, _ = ctx.inputs
    new = min(GENERATED_TOKENS, ctx.config.max_seq_len - 4 + 1)
    prompts = ids[:, :4]
    outputs = {(b, cache): np.stack(generate(ctx.models[b], prompts, new, use_cache=cache, stop_at_eot=False))
               for b in names for cache in (True, False)}
    reference = outputs[(names[0], True)]
    checks = []
    for (backend, cache), tokens in outputs.items():
        if (backend, cache) == (names[0], True):
            continue
        differing = int((tokens != reference).sum())
        checks.append(Check(f"greedy {new} tokens: {backend} {'cache' if cache else 'no cache'} vs {names[0]} cache",
                            float(differing), differing / reference.size, 0.0, differing == 0,
                            f"{reference.shape[0]} prompts; {differing} tokens differ"))
    return checks


CHECKS: list[Callable[[ParityContext], list[Check]]] = [
    check_trajectory,
    check_accumulation,
    check_resume,
    check_generation,
]
