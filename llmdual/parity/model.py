"""Model parity checks: identical initial weights, logits, loss and every gradient for every pair of backends, logits
of each against the float64 reference, model files across backends, causality and padding invariance, and a
GPT-2-format state dict."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from itertools import permutations
from pathlib import Path

import numpy as np

from llmdual.api import build, forward, load, save
from llmdual.contract import backend
from llmdual.core.weights import from_hf_gpt2, init_weights
from llmdual.parity.core import (
    GRAD_RTOL,
    LOGITS_ATOL,
    LOSS_RTOL,
    REFERENCE_ATOL,
    Check,
    ParityContext,
    compare,
    label,
    pairs,
    peers,
    references,
)


def check_weights_identical(ctx: ParityContext) -> list[Check]:
    """Same seed -> bit-identical canonical weights in every pair of backends."""
    weights = {b: backend(b).get_weights(ctx.models[b]) for b in peers("forward")}
    checks = []
    for a, b in pairs("forward"):
        wa, wb = weights[a], weights[b]
        differing = [n for n in wa if not np.array_equal(wa[n], wb[n])]
        max_abs = max(float(np.abs(wa[n] - wb[n]).max()) for n in wa)
        detail = f"{len(wa)} tensors" + (f"; differ: {differing[:5]}" if differing else "")
        checks.append(Check(f"weights identical {a} vs {b} (same seed)", max_abs, 0.0 if not differing else max_abs,
                            0.0, not differing, detail))
    return checks


def check_forward(ctx: ParityContext) -> list[Check]:
    """Logits of every pair of backends, then of each backend against the float64 reference, without and with a
    padded attention mask."""
    ids, mask = ctx.inputs
    variants = {"": None, ", padded mask": mask}
    logits = {(b, v): forward(ctx.models[b], ids, m) for v, m in variants.items() for b in ctx.models}
    checks = [compare(f"logits {a} vs {b}{v}", logits[a, v], logits[b, v], LOGITS_ATOL)
              for v in variants for a, b in pairs("forward")]
    # backend by backend, so each one's drift from the exact values reads as one block of rows
    return checks + [compare(f"logits {b} vs {label(r)}{v}", logits[r, v], logits[b, v], REFERENCE_ATOL, reference=True)
                     for b in peers("forward") for r in references() for v in variants]


def check_loss_and_grads(ctx: ParityContext) -> list[Check]:
    """Cross-entropy loss within LOSS_RTOL, and every canonical gradient within GRAD_RTOL of its scale, for every
    pair of backends that computes gradients."""
    ids, _ = ctx.inputs
    results = {b: backend(b).loss_and_grads(ctx.models[b], ids, ctx.targets) for b in peers("gradients")}
    checks = []
    for a, b in pairs("gradients"):
        (la, ga), (lb, gb) = results[a], results[b]
        rel = abs(la - lb) / max(abs(la), 1e-30)
        checks.append(Check(f"loss {a} vs {b}", abs(la - lb), rel, LOSS_RTOL, rel <= LOSS_RTOL,
                            f"{a} {la:.7f} {b} {lb:.7f}"))
        worst_name, worst_rel, worst_abs = "", 0.0, 0.0
        for name in ga:
            scale = max(float(np.abs(ga[name]).max()), 1e-30)
            diff = float(np.abs(ga[name] - gb[name]).max())
            if diff / scale >= worst_rel:
                worst_name, worst_rel, worst_abs = name, diff / scale, diff
        checks.append(Check(f"gradients {a} vs {b} (worst tensor, rel to its max)", worst_abs, worst_rel, GRAD_RTOL,
                            worst_rel <= GRAD_RTOL, f"{len(ga)} tensors; worst {worst_name}"))
    return checks


def check_checkpoint_crossover(ctx: ParityContext) -> list[Check]:
    """Save in one backend, load in another (every direction): same logits as the model that was saved."""
    ids, mask = ctx.inputs
    mask = mask if ctx.task == "classifier" else None
    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        for src, dst in permutations(peers("forward"), 2):
            path = save(ctx.models[src], Path(tmp) / f"{src}.safetensors")
            restored = load(path, backend=dst)
            checks.append(compare(f"save {src} -> load {dst}", forward(ctx.models[src], ids, mask),
                                  forward(restored, ids, mask), LOGITS_ATOL))
    return checks


def check_invariance(ctx: ParityContext) -> list[Check]:
    """In every backend (the float64 reference included): LM, changing future tokens leaves earlier logits
    unchanged; classifier, padding leaves the prediction unchanged."""
    ids, mask = ctx.inputs
    rng = np.random.default_rng(ctx.seed + 2)
    checks = []
    for name, model in ctx.models.items():
        if ctx.task == "lm":
            cut = ids.shape[1] // 2
            changed = ids.copy()
            changed[:, cut:] = rng.integers(0, ctx.config.vocab_size, changed[:, cut:].shape)
            a, b = forward(model, ids)[:, :cut], forward(model, changed)[:, :cut]
            checks.append(compare(f"causal: future tokens ignored [{name}]", a, b, LOGITS_ATOL))
        else:
            n = int(mask[-1].sum())
            alone = forward(model, ids[-1:, :n])
            padded_ids = ids[-1:].copy()
            padded_ids[:, n:] = rng.integers(0, ctx.config.vocab_size, padded_ids[:, n:].shape)
            padded = forward(model, padded_ids, mask[-1:])
            checks.append(compare(f"padding ignored [{name}]", alone, padded, LOGITS_ATOL))
    return checks


def check_hf_gpt2(ctx: ParityContext) -> list[Check]:
    """A state dict in GPT-2's published names and Conv1D layout, through ``from_hf_gpt2``, gives equal logits in
    every pair of backends."""
    if ctx.task != "lm":
        return []
    state = {("transformer." + n if n.startswith(("h.", "w", "ln_f")) else n): v
             for n, v in init_weights(ctx.config, "lm", ctx.seed + 3).items()}
    state["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, ctx.config.max_seq_len, ctx.config.max_seq_len)))
    state["lm_head.weight"] = state["transformer.wte.weight"]
    config, weights = from_hf_gpt2(state, {"n_head": ctx.config.n_heads, "layer_norm_epsilon": ctx.config.norm_eps})
    ids, _ = ctx.inputs
    logits = {b: forward(build(config, b, "lm", weights=weights), ids) for b in peers("forward")}
    return [compare(f"from_hf_gpt2 state dict: logits {a} vs {b}", logits[a], logits[b], LOGITS_ATOL)
            for a, b in pairs("forward")]


CHECKS: list[Callable[[ParityContext], list[Check]]] = [
    check_weights_identical,
    check_forward,
    check_loss_and_grads,
    check_checkpoint_crossover,
    check_invariance,
    check_hf_gpt2,
]
