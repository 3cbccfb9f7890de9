"""Model parity checks: identical initial weights, logits, loss and every gradient, model files across backends,
causality and padding invariance, and a GPT-2-format state dict."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llmdual.api import build, forward, load, save
from llmdual.contract import backend
from llmdual.parity.core import BACKENDS, GRAD_RTOL, LOGITS_ATOL, LOSS_RTOL, Check, ParityContext, compare
from llmdual.core.weights import from_hf_gpt2, init_weights


def check_weights_identical(ctx: ParityContext) -> list[Check]:
    """Same seed -> bit-identical canonical weights in both backends."""
    wt, wk = (backend(b).get_weights(ctx.models[b]) for b in BACKENDS)
    differing = [n for n in wt if not np.array_equal(wt[n], wk[n])]
    max_abs = max(float(np.abs(wt[n] - wk[n]).max()) for n in wt)
    detail = f"{len(wt)} tensors" + (f"; differ: {differing[:5]}" if differing else "")
    return [Check("weights identical (same seed)", max_abs, 0.0 if not differing else max_abs, 0.0, not differing, detail)]


def check_forward(ctx: ParityContext) -> list[Check]:
    """Logits torch vs keras, without and with a padded attention mask."""
    ids, mask = ctx.inputs
    t, k = ctx.models["torch"], ctx.models["keras"]
    checks = [compare("logits", forward(t, ids), forward(k, ids), LOGITS_ATOL)]
    checks.append(compare("logits, padded mask", forward(t, ids, mask), forward(k, ids, mask), LOGITS_ATOL))
    return checks


def check_loss_and_grads(ctx: ParityContext) -> list[Check]:
    """Cross-entropy loss within LOSS_RTOL, and every canonical gradient within GRAD_RTOL of its scale."""
    ids, _ = ctx.inputs
    (lt, gt), (lk, gk) = (backend(b).loss_and_grads(ctx.models[b], ids, ctx.targets) for b in BACKENDS)
    rel = abs(lt - lk) / max(abs(lt), 1e-30)
    checks = [Check("loss", abs(lt - lk), rel, LOSS_RTOL, rel <= LOSS_RTOL, f"torch {lt:.7f} keras {lk:.7f}")]
    worst_name, worst_rel, worst_abs = "", 0.0, 0.0
    for name in gt:
        scale = max(float(np.abs(gt[name]).max()), 1e-30)
        diff = float(np.abs(gt[name] - gk[name]).max())
        if diff / scale >= worst_rel:
            worst_name, worst_rel, worst_abs = name, diff / scale, diff
    checks.append(
        Check("gradients (worst tensor, rel to its max)", worst_abs, worst_rel, GRAD_RTOL, worst_rel <= GRAD_RTOL,
              f"{len(gt)} tensors; worst {worst_name}")
    )
    return checks


def check_checkpoint_crossover(ctx: ParityContext) -> list[Check]:
    """Save in one backend, load in the other: same logits as the model that was saved."""
    ids, mask = ctx.inputs
    mask = mask if ctx.task == "classifier" else None
    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        for src, dst in (("torch", "keras"), ("keras", "torch")):
            path = save(ctx.models[src], Path(tmp) / f"{src}.safetensors")
            restored = load(path, backend=dst)
            checks.append(compare(f"save {src} -> load {dst}", forward(ctx.models[src], ids, mask),
                                  forward(restored, ids, mask), LOGITS_ATOL))
    return checks


def check_invariance(ctx: ParityContext) -> list[Check]:
    """LM: changing future tokens leaves earlier logits unchanged. Classifier: padding leaves the prediction unchanged."""
    ids, mask = ctx.inputs
    rng = np.random.default_rng(ctx.seed + 2)
    checks = []
    for name in BACKENDS:
        model = ctx.models[name]
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
    """A state dict in GPT-2's published names and Conv1D layout, through ``from_hf_gpt2``, gives equal logits."""
    if ctx.task != "lm":
        return []
    state = {("transformer." + n if n.startswith(("h.", "w", "ln_f")) else n): v
             for n, v in init_weights(ctx.config, "lm", ctx.seed + 3).items()}
    state["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, ctx.config.max_seq_len, ctx.config.max_seq_len)))
    state["lm_head.weight"] = state["transformer.wte.weight"]
    config, weights = from_hf_gpt2(state, {"n_head": ctx.config.n_heads, "layer_norm_epsilon": ctx.config.norm_eps})
    ids, _ = ctx.inputs
    t, k = (build(config, b, "lm", weights=weights) for b in BACKENDS)
    return [compare("from_hf_gpt2 state dict: logits", forward(t, ids), forward(k, ids), LOGITS_ATOL)]


CHECKS: list[Callable[[ParityContext], list[Check]]] = [
    check_weights_identical,
    check_forward,
    check_loss_and_grads,
    check_checkpoint_crossover,
    check_invariance,
    check_hf_gpt2,
]
