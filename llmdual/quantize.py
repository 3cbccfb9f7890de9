"""Native int8 quantization of an llmdual model, the same scheme in meaning in both backends, and the quality it
costs measured the same way for any engine.

``quantize(model, "int8")``: every ``Linear``/``Dense`` projection (attention, MLP, classifier ``score`` or an
untied ``lm_head``) gets int8 weights, symmetric, one scale per output channel, and its input is quantized on the
fly, symmetric, one scale per token: torchao's ``Int8DynamicActivationInt8WeightConfig`` in PyTorch, Keras'
``model.quantize("int8")`` on its ``Dense`` layers in Keras. Embeddings (and so the tied LM head), layer norms and
biases stay float32. The model is changed in place and can then only run: forward, evaluate, generate.

``quality`` compares any two forward functions (native int8, ONNX int8...) on the same batches: perplexity of each,
its change, top-1 agreement and the largest logit change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from llmdual.api import build, forward, get_weights
from llmdual.contract import backend_name, backend_of
from llmdual.core.config import Config
from llmdual.core.corpus import stdlib_lm_data
from llmdual.evaluate import cross_entropy_sum

SCHEMES = ("int8",)
Forward = Callable[[np.ndarray], np.ndarray]  # ids (B, T) -> logits (B, T, vocab)


def quantize(model: Any, scheme: str = "int8") -> Any:
    """Quantize ``model``'s projections in place (see the module docstring) and return it; ``ValueError`` for an
    unknown scheme, a model already quantized, or one with unmerged LoRA adapters."""
    backend = backend_of(model, "int8")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; choose one of {list(SCHEMES)}")
    done = quantized(model)
    if done is not None:
        raise ValueError(f"the model is already quantized ({done}); quantize a float32 model once "
                         "(llmdual.load or llmdual.build it again)")
    if model.lora is not None:
        raise ValueError("the model has unmerged LoRA adapters: llmdual.merge_lora(model) folds them into its "
                         "weights, then quantize the merged model")
    backend.quantize(model, scheme)
    return model


def quantized(model: Any) -> str | None:
    """The scheme ``model`` was quantized with, or None for a float model."""
    return getattr(model, "quantized", None)


def weight_bytes(model: Any) -> int:
    """Bytes ``model``'s weights take in memory: int8 data and scales once quantized, float32 otherwise."""
    return backend_of(model).weight_bytes(model)


@dataclass
class Quality:
    """What quantization cost on the same batches: perplexity before and after, the share of next-token argmax
    predictions kept, and the largest logit change."""

    perplexity: float
    quantized_perplexity: float
    top1_agreement: float
    max_abs_logit_diff: float
    tokens: int

    @property
    def perplexity_delta(self) -> float:
        """Relative change of perplexity (0.01 = 1% worse)."""
        return self.quantized_perplexity / self.perplexity - 1.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "perplexity_delta": self.perplexity_delta}


def quality(reference: Forward, candidate: Forward, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Quality:
    """Compare ``candidate``'s logits with ``reference``'s on LM batches ``(x, y)``; ``ValueError`` if there is no
    target to count."""
    sums, count, agree, predicted, worst = [0.0, 0.0], 0, 0, 0, 0.0
    for x, y in batches:
        a, b = np.asarray(reference(x), np.float32), np.asarray(candidate(x), np.float32)
        if a.shape != b.shape:
            raise ValueError(f"the two forwards disagree on the logits' shape: {a.shape} vs {b.shape}")
        for i, logits in enumerate((a, b)):
            total, n = cross_entropy_sum(logits, y)
            sums[i] += total
        count += n
        keep = np.asarray(y) != -100
        agree += int((a.argmax(-1) == b.argmax(-1))[keep].sum())
        predicted += int(keep.sum())
        worst = max(worst, float(np.abs(a - b).max()))
    if not count:
        raise ValueError("no targets to compare on: the batches are empty or every target is -100")
    return Quality(float(np.exp(sums[0] / count)), float(np.exp(sums[1] / count)), agree / predicted, worst, count)


def quantized_copy(model: Any, scheme: str = "int8") -> Any:
    """A quantized copy of a float32 model (same config, task and weights); ``model`` itself is left as it is."""
    copy = build(model.config, backend_name(model), model.task, weights=get_weights(model))
    return quantize(copy, scheme)


def measure(model: Any, quantized_model: Any, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Quality:
    """``quality`` of ``quantized_model`` against the float32 ``model`` through ``llmdual.forward``."""
    return quality(lambda x: forward(model, x), lambda x: forward(quantized_model, x), batches)


def corpus_batches(config: Config, batches: int = 8, batch_size: int = 8, files: int = 300,
                   seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validation batches of the built-in corpus for a model of ``config``: a tokenizer of its vocabulary size
    trained on ``files`` standard-library sources, blocks of its context length."""
    _, data = stdlib_lm_data(config.vocab_size, config.max_seq_len, files, seed)
    return [data.get_batch("val", batch_size, i) for i in range(batches)]
