"""Evaluation for both backends in one code path: ``llmdual.forward`` logits in, numpy metrics out.

LM: mean next-token cross-entropy and perplexity. Classifier: cross-entropy, accuracy and macro-F1. The same
weights give the same numbers whichever backend computed the logits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from llmdual.api import forward

Batch = tuple[np.ndarray, ...]


def cross_entropy_sum(logits: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
    """Summed cross-entropy over targets that are not -100, and how many were counted. Exponentials in float32
    (the logits' precision; 10x faster than float64 over a large vocabulary), sums in float64."""
    logits = np.asarray(logits, np.float32).reshape(-1, np.shape(logits)[-1])
    targets = np.asarray(targets).reshape(-1)
    keep = targets != -100
    z = logits[keep]
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1, dtype=np.float64))
    return float((log_norm - z[np.arange(len(z)), targets[keep]]).sum()), int(keep.sum())


def macro_f1(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes that occur among labels or predictions."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    scores = []
    for c in range(num_classes):
        tp = np.sum((predictions == c) & (labels == c))
        predicted, actual = np.sum(predictions == c), np.sum(labels == c)
        if predicted + actual:
            scores.append(2.0 * tp / (predicted + actual))
    return float(np.mean(scores)) if scores else 0.0


def _run(model: Any, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets of one batch: LM ``(x, y)`` or classifier ``(ids, mask, labels)``."""
    ids, *mask, targets = batch
    return forward(model, ids, mask[0] if mask else None), np.asarray(targets)


def mean_loss(model: Any, batches: Iterable[Batch]) -> float:
    """Mean cross-entropy over every counted target of ``batches`` (not a mean of batch means)."""
    total, count = 0.0, 0
    for batch in batches:
        s, n = cross_entropy_sum(*_run(model, batch))
        total, count = total + s, count + n
    if not count:
        raise ValueError("no targets to evaluate: the batches are empty or every target is -100")
    return total / count


def eval_batches(data: Any, split: str, batch_size: int, max_batches: int) -> Iterable[Batch]:
    """Batches of ``split``: a ``ClassificationDataset``'s whole split in order, an ``LMDataset``'s first
    ``max_batches`` seeded batches, or ``data`` itself if it is an iterable of batches."""
    if hasattr(data, "eval_batches"):
        return data.eval_batches(split, batch_size)
    if hasattr(data, "get_batch"):
        return (data.get_batch(split, batch_size, i) for i in range(max_batches))
    return data


def evaluate(model: Any, data: Any, split: str = "val", batch_size: int = 32,
             max_batches: int = 20) -> dict[str, float]:
    """Metrics of ``model`` on ``data`` (a dataset or an iterable of batches, see ``eval_batches``).

    LM: ``loss`` (nats/token), ``perplexity``, ``tokens``. Classifier: ``loss``, ``accuracy``, ``macro_f1``,
    ``examples``.
    """
    total, count, predictions, labels = 0.0, 0, [], []
    for batch in eval_batches(data, split, batch_size, max_batches):
        logits, targets = _run(model, batch)
        s, n = cross_entropy_sum(logits, targets)
        total, count = total + s, count + n
        if model.task == "classifier":
            predictions.append(logits.argmax(axis=-1))
            labels.append(targets)
    if not count:
        raise ValueError(f"no {split!r} examples to evaluate")
    loss = total / count
    if model.task == "lm":
        return {"loss": loss, "perplexity": float(np.exp(loss)), "tokens": count}
    predicted, actual = np.concatenate(predictions), np.concatenate(labels)
    return {
        "loss": loss,
        "accuracy": float(np.mean(predicted == actual)),
        "macro_f1": macro_f1(predicted, actual, model.config.num_classes),
        "examples": count,
    }
