"""LoRA parity: adapters added from the same seed give the same logits, adapter gradients and training trajectory
in both backends; merging changes no logit; adapters saved in one backend load into the other."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.api import build, forward, get_weights
from llmdual.contract import backend
from llmdual.lora import add_lora, load_lora, merge_lora, save_lora
from llmdual.parity.core import BACKENDS, GRAD_RTOL, LOGITS_ATOL, LOSS_RTOL, Check, ParityContext, compare
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
    """Bit-identical adapters from the shared initializer; logits torch vs keras, without and with a padded mask."""
    ids, mask = ctx.inputs
    models = {b: lora_model(ctx, b) for b in BACKENDS}
    wt, wk = (get_weights(models[b]) for b in BACKENDS)
    differing = [n for n in wt if not np.array_equal(wt[n], wk[n])]
    adapters = sum(n.endswith(("lora_A", "lora_B")) for n in wt)
    return [
        Check("lora: weights identical (same seed)", 0.0 if not differing else float("inf"), 0.0, 0.0, not differing,
              f"{adapters} adapters of {len(wt)} tensors" + (f"; differ: {differing[:5]}" if differing else "")),
        compare("lora: logits", forward(models["torch"], ids), forward(models["keras"], ids), LOGITS_ATOL),
        compare("lora: logits, padded mask", forward(models["torch"], ids, mask), forward(models["keras"], ids, mask),
                LOGITS_ATOL),
    ]


def check_lora_grads(ctx: ParityContext) -> list[Check]:
    """The loss, and every adapter's gradient (the only trained weights) within GRAD_RTOL of its scale."""
    ids, _ = ctx.inputs
    (lt, gt), (lk, gk) = (backend(b).loss_and_grads(lora_model(ctx, b), ids, ctx.targets) for b in BACKENDS)
    rel = abs(lt - lk) / max(abs(lt), 1e-30)
    worst, worst_rel, worst_abs = "", 0.0, 0.0
    for name in gt:
        diff = float(np.abs(gt[name] - gk[name]).max())
        if diff / max(float(np.abs(gt[name]).max()), 1e-30) >= worst_rel:
            worst, worst_rel, worst_abs = name, diff / max(float(np.abs(gt[name]).max()), 1e-30), diff
    return [
        Check("lora: loss", abs(lt - lk), rel, LOSS_RTOL, rel <= LOSS_RTOL, f"torch {lt:.7f} keras {lk:.7f}"),
        Check("lora: adapter gradients (worst tensor)", worst_abs, worst_rel, GRAD_RTOL, worst_rel <= GRAD_RTOL,
              f"{len(gt)} tensors (the adapters); worst {worst}"),
    ]


def check_lora_training(ctx: ParityContext) -> list[Check]:
    """20 LoRA steps from B = 0 in each backend: same losses, gradient norms and adapters; base weights untouched;
    the merged weights of the two runs agree as closely as their adapters."""
    cfg = train_config()
    runs, models = {}, {}
    for name in BACKENDS:
        models[name] = lora_model(ctx, name, init_b="zeros")
        history = train(models[name], batches(ctx, cfg.batch_size), cfg)
        runs[name] = history, get_weights(models[name])
    checks = compare_runs("lora trajectory torch vs keras", runs["torch"], runs["keras"])
    norms_t, norms_k = (np.asarray(runs[b][0].grad_norm) for b in BACKENDS)
    rel = float((np.abs(norms_t - norms_k) / norms_t).max())
    checks.append(Check("lora trajectory: pre-clip gradient norms", float(np.abs(norms_t - norms_k).max()), rel,
                        GRAD_NORM_RTOL, rel <= GRAD_NORM_RTOL, f"{len(norms_t)} steps"))
    initial = get_weights(build(ctx.config, "torch", ctx.task, ctx.seed))
    for name in BACKENDS:
        moved = max(float(np.abs(runs[name][1][n] - initial[n]).max()) for n in initial)
        checks.append(Check(f"lora trajectory: base weights frozen [{name}]", moved, 0.0, 0.0, moved == 0.0,
                            f"{len(initial)} tensors"))
    for model in models.values():
        merge_lora(model)
    weight_atol = WEIGHT_TRAVEL_FRACTION * float(np.sum(runs["torch"][0].lr))
    merged = [get_weights(models[b]) for b in BACKENDS]
    worst = max(merged[0], key=lambda n: float(np.abs(merged[0][n] - merged[1][n]).max()))
    diff = float(np.abs(merged[0][worst] - merged[1][worst]).max())
    checks.append(Check("lora trajectory: merged weights torch vs keras", diff,
                        diff / max(float(np.abs(merged[0][worst]).max()), 1e-30), weight_atol, diff <= weight_atol,
                        f"{len(merged[0])} tensors; worst {worst}"))
    return checks


def check_lora_merge(ctx: ParityContext) -> list[Check]:
    """In each backend, folding the adapters into the weights leaves the logits unchanged."""
    ids, mask = ctx.inputs
    mask = mask if ctx.task == "classifier" else None
    checks = []
    for name in BACKENDS:
        model = lora_model(ctx, name)
        before = forward(model, ids, mask)
        merge_lora(model)
        checks.append(compare(f"lora: merged vs unmerged logits [{name}]", before, forward(model, ids, mask),
                              LOGITS_ATOL))
    return checks


def check_lora_crossover(ctx: ParityContext) -> list[Check]:
    """Adapters saved from one backend, loaded into a fresh model of the other: the saved model's logits."""
    ids, mask = ctx.inputs
    mask = mask if ctx.task == "classifier" else None
    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        for src, dst in (("torch", "keras"), ("keras", "torch")):
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
