"""LoRA parity: adapters added from the same seed give the same logits, adapter gradients and training trajectory
in every pair of backends that take adapters; merging changes no logit; adapters saved in one backend load into
every other."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.api import build, forward, get_weights
from llmdual.contract import backend
from llmdual.lora import add_lora, load_lora, merge_lora, save_lora
from llmdual.parity.core import GRAD_RTOL, LOGITS_ATOL, LOSS_RTOL, Check, ParityContext, compare, pairs, peers
from llmdual.parity.training import GRAD_NORM_RTOL, WEIGHT_TRAVEL_FRACTION, batches, compare_runs, train_config
from llmdual.training import train

# Every projection type, a rank below every side, alpha != rank so the scale is exercised.
LORA = {"rank": 4, "alpha": 8.0, "targets": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}


def lora_model(ctx: ParityContext, name: str, init_b: str = "normal") -> Any:
    """A fresh model of backend ``name`` from ``ctx``'s seed with adapters (non-zero B by default: a real update)."""
    model = build(ctx.config, name, ctx.task, ctx.seed)
    add_lora(model, **LORA, seed=ctx.seed, init_b=init_b)
    return model


def check_lora_forward(ctx: ParityContext) -> list[Check]:
    """Bit-identical adapters from the shared initializer; logits of every pair, without and with a padded mask."""
    ids, mask = ctx.inputs
    models = {b: lora_model(ctx, b) for b in peers("lora")}
    weights = {b: get_weights(m) for b, m in models.items()}
    logits = {b: forward(m, ids) for b, m in models.items()}
    padded = {b: forward(m, ids, mask) for b, m in models.items()}
    checks = []
    for a, b in pairs("lora"):
        wa, wb = weights[a], weights[b]
        differing = [n for n in wa if not np.array_equal(wa[n], wb[n])]
        adapters = sum(n.endswith(("lora_A", "lora_B")) for n in wa)
        checks += [
            Check(f"lora: weights identical {a} vs {b} (same seed)", 0.0 if not differing else float("inf"), 0.0, 0.0,
                  not differing,
                  f"{adapters} adapters of {len(wa)} tensors" + (f"; differ: {differing[:5]}" if differing else "")),
            compare(f"lora: logits {a} vs {b}", logits[a], logits[b], LOGITS_ATOL),
            compare(f"lora: logits {a} vs {b}, padded mask", padded[a], padded[b], LOGITS_ATOL),
        ]
    return checks


def check_lora_grads(ctx: ParityContext) -> list[Check]:
    """The loss, and every adapter's gradient (the only trained weights) within GRAD_RTOL of its scale, for every
    pair of backends that take adapters."""
    ids, _ = ctx.inputs
    results = {b: backend(b).loss_and_grads(lora_model(ctx, b), ids, ctx.targets) for b in peers("lora")}
    checks = []
    for a, b in pairs("lora"):
        (la, ga), (lb, gb) = results[a], results[b]
        rel = abs(la - lb) / max(abs(la), 1e-30)
        worst, worst_rel, worst_abs = "", 0.0, 0.0
        for name in ga:
            diff = float(np.abs(ga[name] - gb[name]).max())
            if diff / max(float(np.abs(ga[name]).max()), 1e-30) >= worst_rel:
                worst, worst_rel, worst_abs = name, diff / max(float(np.abs(ga[name]).max()), 1e-30), diff
        checks += [
            Check(f"lora: loss {a} vs {b}", abs(la - lb), rel, LOSS_RTOL, rel <= LOSS_RTOL,
                  f"{a} {la:.7f} {b} {lb:.7f}"),
            Check(f"lora: adapter gradients {a} vs {b} (worst tensor)", worst_abs, worst_rel, GRAD_RTOL,
                  worst_rel <= GRAD_RTOL, f"{len(ga)} tensors (the adapters); worst {worst}"),
        ]
    return checks


def check_lora_training(ctx: ParityContext) -> list[Check]:
    """20 LoRA steps from B = 0 in each backend that takes adapters: the same losses, gradient norms and adapters in
    every pair; base weights untouched; the merged weights of a pair's runs agree as closely as their adapters."""
    cfg, names = train_config(), peers("lora")
    if not names:
        return []
    runs, models = {}, {}
    for name in names:
        models[name] = lora_model(ctx, name, init_b="zeros")
        history = train(models[name], batches(ctx, cfg.batch_size), cfg)
        runs[name] = history, get_weights(models[name])
    checks = []
    for a, b in pairs("lora"):
        checks += compare_runs(f"lora trajectory {a} vs {b}", runs[a], runs[b])
        norms_a, norms_b = (np.asarray(runs[n][0].grad_norm) for n in (a, b))
        rel = float((np.abs(norms_a - norms_b) / norms_a).max())
        checks.append(Check(f"lora trajectory {a} vs {b}: pre-clip gradient norms",
                            float(np.abs(norms_a - norms_b).max()), rel, GRAD_NORM_RTOL, rel <= GRAD_NORM_RTOL,
                            f"{len(norms_a)} steps"))
    initial = get_weights(build(ctx.config, names[0], ctx.task, ctx.seed))
    for name in names:
        moved = max(float(np.abs(runs[name][1][n] - initial[n]).max()) for n in initial)
        checks.append(Check(f"lora trajectory: base weights frozen [{name}]", moved, 0.0, 0.0, moved == 0.0,
                            f"{len(initial)} tensors"))
    for model in models.values():
        merge_lora(model)
    merged = {name: get_weights(model) for name, model in models.items()}
    for a, b in pairs("lora"):
        weight_atol = WEIGHT_TRAVEL_FRACTION * float(np.sum(runs[a][0].lr))
        worst = max(merged[a], key=lambda n: float(np.abs(merged[a][n] - merged[b][n]).max()))
        diff = float(np.abs(merged[a][worst] - merged[b][worst]).max())
        checks.append(Check(f"lora trajectory: merged weights {a} vs {b}", diff,
                            diff / max(float(np.abs(merged[a][worst]).max()), 1e-30), weight_atol, diff <= weight_atol,
                            f"{len(merged[a])} tensors; worst {worst}"))
    return checks


def check_lora_merge(ctx: ParityContext) -> list[Check]:
    """In each backend, folding the adapters into the weights leaves the logits unchanged."""
    ids, mask = ctx.inputs
    mask = mask if ctx.task == "classifier" else None
    checks = []
    for name in peers("lora"):
        model = lora_model(ctx, name)
        before = forward(model, ids, mask)
        merge_lora(model)
        checks.append(compare(f"lora: merged vs unmerged logits [{name}]", before, forward(model, ids, mask),
                              LOGITS_ATOL))
    return checks


def check_lora_crossover(ctx: ParityContext) -> list[Check]:
    """Adapters saved from one backend, loaded into a fresh model of each other one: the saved model's logits."""
    ids, mask = ctx.inputs
    mask = mask if ctx.task == "classifier" else None
    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        for src, dst in permutations(peers("lora"), 2):
            model = lora_model(ctx, src)
            path = save_lora(model, Path(tmp) / f"{src}.safetensors")
            restored = build(ctx.config, dst, ctx.task, ctx.seed)
            load_lora(restored, path)
            checks.append(compare(f"lora: save_lora {src} -> load_lora {dst}", forward(model, ids, mask),
                                  forward(restored, ids, mask), LOGITS_ATOL))
    return checks


CHECKS: list[Callable[[ParityContext], list[Check]]] = [
    check_lora_forward,
    check_lora_grads,
    check_lora_training,
    check_lora_merge,
    check_lora_crossover,
]
