"""Adapting a pretrained LM, side by side in each backend: a base model trained on one part of the built-in corpus,
then fine-tuned on another part with LoRA and, for comparison, in full; finally the merged LoRA model in int8.
``examples/finetune_lora.py`` is the command line over this module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.api import build, forward, get_weights
from llmdual.bench.env import peak_rss_mb
from llmdual.bench.timing import reset_peak_rss
from llmdual.contract import backend_name
from llmdual.core.config import Config
from llmdual.core.corpus import default_corpus_files, stdlib_dir
from llmdual.core.data import LMDataset, token_stream
from llmdual.core.recipe import History, TrainConfig
from llmdual.core.tokenizer import Tokenizer
from llmdual.core.weights import trainable_shapes
from llmdual.evaluate import mean_loss
from llmdual.experiments.sidebyside import PALETTE, STYLES, draw_history, save_png
from llmdual.lora import add_lora, merge_lora
from llmdual.quantize import Quality, measure, quantized_copy
from llmdual.training import train


@dataclass
class Variant:
    """One model of a backend: its validation loss on the fine-tuning part, and how it was trained (if it was)."""

    backend: str
    name: str  # "base", "lora" or "full"
    val_loss: float
    trainable: int
    history: History | None = None
    step_s: float | None = None  # median seconds per optimizer step
    peak_rss_mb: float | None = None  # the process's resident peak while it trained
    model: Any = field(default=None, repr=False)


def corpus_parts(vocab_size: int, block_size: int, package: str = "asyncio", files: int = 200,
                 seed: int = 0) -> tuple[Tokenizer, LMDataset, LMDataset]:
    """The tokenizer and two LM datasets of the built-in corpus: ``files`` standard-library sources outside
    ``package`` (drawn at random, seeded) to pretrain on, and ``package``'s own sources to fine-tune on. The
    tokenizer is trained on the first part only, as a pretrained model's would be."""
    inside = stdlib_dir() / package
    every = default_corpus_files()
    target = [p for p in every if inside in p.parents]
    if not target:
        raise ValueError(f"no standard-library package {package!r} with sources under {stdlib_dir()}")
    others = [p for p in every if inside not in p.parents]
    base = [others[i] for i in np.random.default_rng(seed).permutation(len(others))[:files]]
    tokenizer = Tokenizer.train(base, vocab_size)
    datasets = [LMDataset(token_stream(tokenizer, part), block_size, seed=seed, vocab_size=tokenizer.vocab_size)
                for part in (base, target)]
    return tokenizer, datasets[0], datasets[1]


def trainable_count(model: Any) -> int:
    """Number of weights training updates: the adapters once the model has LoRA, else all."""
    return sum(int(np.prod(s)) for s in trainable_shapes(model.config, model.task, model.lora).values())


def val_batches(data: LMDataset, batches: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first ``batches`` seeded validation batches: every model is evaluated on the same ones."""
    return [data.get_batch("val", batch_size, i) for i in range(batches)]


def _trained(backend: str, name: str, model: Any, data: LMDataset, recipe: TrainConfig,
             val: Sequence[tuple[np.ndarray, np.ndarray]]) -> Variant:
    trainable = trainable_count(model)
    reset_peak_rss()
    history = train(model, data, recipe)
    peak = peak_rss_mb()
    tokens = recipe.batch_size * recipe.grad_accum * data.block_size
    step_s = float(np.median([tokens / t for t in history.tokens_per_s]))
    return Variant(backend, name, mean_loss(model, val), trainable, history, step_s, peak, model)


def adapt(config: Config, backend: str, base_data: LMDataset, target_data: LMDataset, base_recipe: TrainConfig,
          tune_recipe: TrainConfig, lora: dict[str, Any], eval_batches: int = 8,
          lora_lr: float | None = None) -> dict[str, Variant]:
    """In ``backend``: train a base LM on ``base_data``, then from its weights a LoRA fine-tune (``add_lora``
    keywords ``lora``, learning rate ``lora_lr`` if given, merged at the end) and a full fine-tune on
    ``target_data``; each evaluated on the same validation batches of ``target_data``."""
    val = val_batches(target_data, eval_batches, tune_recipe.batch_size)
    base = build(config, backend, seed=base_recipe.seed)
    pretrained = _trained(backend, "base", base, base_data, base_recipe, val)
    weights = get_weights(base)
    tuned = build(config, backend, weights=weights)
    add_lora(tuned, **lora)
    lora_recipe = tune_recipe if lora_lr is None else tune_recipe.replace(lr=lora_lr, min_lr=lora_lr / 10)
    with_lora = _trained(backend, "lora", tuned, target_data, lora_recipe, val)
    merge_lora(tuned)
    full = _trained(backend, "full", build(config, backend, weights=weights), target_data, tune_recipe, val)
    return {"base": pretrained, "lora": with_lora, "full": full}


def int8_quality(model: Any, batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[Any, Quality]:
    """The int8 copy of a float32 ``model`` (``llmdual.quantize``) and what it costs on ``batches``."""
    quantized = quantized_copy(model)
    return quantized, measure(model, quantized, batches)


def onnx_int8_quality(model: Any, batches: Sequence[tuple[np.ndarray, np.ndarray]],
                      folder: str | Path) -> tuple[float, Quality]:
    """The same measure for onnxruntime's int8 (``llmdual.onnx.quantize`` of the model's ONNX export): the int8
    file's size in MB and its quality against the float32 model."""
    from llmdual.onnx import open_session
    from llmdual.onnx import quantize as quantize_onnx
    from llmdual.onnx.export import export_onnx
    from llmdual.onnx.runtime import logits
    from llmdual.quantize import quality

    folder = Path(folder)
    source = export_onnx(model, folder / f"{backend_name(model)}-merged.onnx").path
    result = quantize_onnx(source, folder / f"{backend_name(model)}-merged-int8.onnx")
    session = open_session(result.path)
    return result.bytes_after / 2**20, quality(lambda x: forward(model, x), lambda x: logits(session, x), batches)


def plot_adaptation(results: dict[str, dict[str, Variant]], path: str | Path, title: str) -> Path:
    """LoRA and full fine-tuning loss of every backend on one chart (training: lines, validation: markers), with
    each base model's validation loss on the fine-tuning part as a dotted line; saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5))
    for i, (backend, variants) in enumerate(results.items()):
        style, colors = STYLES[i % len(STYLES)], PALETTE[i % len(PALETTE)]
        for (name, label), color in zip((("lora", "LoRA"), ("full", "full fine-tune")), colors):
            draw_history(ax, variants[name].history, style, color, f"{backend} {label}")
        ax.axhline(variants["base"].val_loss, color=colors[0], lw=1, ls=":",
                   label=f"{backend} base model, val ({variants['base'].val_loss:.2f})")
    ax.set(xlabel="fine-tuning step", ylabel="cross-entropy (nats)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the curves fill the axes
    return save_png(fig, path)

