"""What every engine's runtime offers a workload (:class:`Runtime`), what it reads of a run's settings
(:class:`EngineSettings`), and the int8 copy the quantized engines time (:func:`quantize_scalars`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from llmdual.core.config import Config
from llmdual.core.recipe import Batch, TrainConfig


class EngineSettings(Protocol):
    """The part of a run's settings an engine reads (``llmdual.bench.settings.BenchSettings`` provides it)."""

    @property
    def config(self) -> Config: ...

    @property
    def seed(self) -> int: ...

    @property
    def dtype(self) -> str: ...

    @property
    def device(self) -> str: ...

    @property
    def threads(self) -> int | None: ...

    @property
    def uses_tf32(self) -> bool: ...

    @property
    def nanogpt(self) -> str | None: ...


class Runtime:
    """An engine opened in a worker process: what a workload needs from it. Subclasses build the model in
    ``prepare`` and override what they support; every call returns only once its work is done."""

    decodes = True  # generation through ``decoder()``; False: the engine's own ``generate`` (references)

    def prepare(self, settings: EngineSettings, task: str, kv_cache: bool) -> dict[str, float]:
        """Build (or export and load) the case's model; scalars such as ``build_s``."""
        raise NotImplementedError

    def prefetch(self, graphs: Sequence[tuple[EngineSettings, str, bool]]) -> None:
        """Work the process's cases (settings, task, KV cache) share, done once before them (ONNX exports)."""

    def forward(self, ids: np.ndarray, mask: np.ndarray | None) -> Callable[[], Any]:
        """A call running one no-grad forward of these inputs."""
        raise NotImplementedError

    def to_numpy(self, output: Any) -> np.ndarray:
        """A forward's output as float32 numpy."""
        return np.asarray(output, np.float32)

    def trainer(self, cfg: TrainConfig) -> Callable[[Batch], tuple[float, float | None]]:
        """One optimizer step: a numpy batch in, (loss, pre-clip gradient norm or None) out."""
        raise NotImplementedError

    def decoder(self, use_cache: bool = True) -> Any:
        """An ``llmdual.core.decoding.Decoder`` over the model."""
        raise NotImplementedError

    def generate(self, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
        """Greedy tokens (B, new_tokens) by the engine's own generate (when ``decodes`` is False)."""
        raise NotImplementedError

    def probe_flops(self) -> float:
        """FLOP/s of a square matmul at the case's precision (``llmdual.bench.timing.probe``)."""
        raise NotImplementedError

    def reset_peaks(self) -> None:
        """Start a new device-memory peak (no-op on CPU)."""

    def peak_device_mb(self) -> float | None:
        """Device memory the allocator peaked at since ``reset_peaks``; None on CPU."""
        return None

    def release(self) -> None:
        """Drop the case's model so the next case starts from the framework's baseline."""


def quantize_scalars(model: Any, scheme: str, settings: EngineSettings, cache: dict[str, Any]
                     ) -> tuple[Any, dict[str, float]]:
    """The quantized copy of a case's float32 ``model`` and its figures: weight sizes before and after, and its quality
    against ``model`` on the built-in corpus (``llmdual.quantize.measure``, computed once per model in ``cache``;
    ``quality_s``: the seconds that took, not part of the build)."""
    from llmdual.quantize import corpus_batches, measure, quantized_copy, weight_bytes

    quantized = quantized_copy(model, scheme)
    key = json.dumps([settings.config.to_dict(), settings.seed, scheme], sort_keys=True)
    started = time.perf_counter()
    if key not in cache:
        cache[key] = measure(model, quantized, corpus_batches(model.config)).to_dict()
    q = cache[key]
    return quantized, {"quality_s": time.perf_counter() - started, "weights_mb": weight_bytes(quantized) / 2**20,
                       "fp32_weights_mb": weight_bytes(model) / 2**20,
                       "perplexity_fp32": q["perplexity"], "perplexity_int8": q["quantized_perplexity"],
                       "perplexity_delta": q["perplexity_delta"], "top1_agreement": q["top1_agreement"],
                       "max_abs_logit_diff": q["max_abs_logit_diff"]}
