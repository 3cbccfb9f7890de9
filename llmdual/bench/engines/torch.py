"""llmdual's PyTorch model, eager (``torch-eager``), under ``torch.compile`` (``torch-compile``) or quantized to int8
with torchao (``torch-int8``, eager; see ``llmdual.quantize``).

Mixed precision is ``torch.autocast`` (weights stay float32), as llmdual's trainer does it; on CUDA every timed
call ends with ``torch.cuda.synchronize`` and device memory is the caching allocator's own peak.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import llmdual
from llmdual.bench.engines.runtime import EngineSettings, Runtime, quantize_scalars
from llmdual.bench.timing import PROBE_SIZE, probe
from llmdual.contract import backend
from llmdual.core.recipe import Batch, TrainConfig
from llmdual.quantize import weight_bytes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Autocast:
    """A ``GreedyDecoder`` whose prefill, steps and greedy loop run under an autocast context."""

    def __init__(self, decoder: Any, autocast: Callable[[], contextlib.AbstractContextManager]):
        self.decoder, self.autocast, self.max_seq_len = decoder, autocast, decoder.max_seq_len

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                max_len: int | None = None) -> tuple[np.ndarray, object]:
        with self.autocast():
            return self.decoder.prefill(input_ids, attention_mask, max_len)

    def step(self, next_ids: np.ndarray, attention_mask: np.ndarray, state: object) -> tuple[np.ndarray, object]:
        with self.autocast():
            return self.decoder.step(next_ids, attention_mask, state)

    def greedy(self, input_ids: np.ndarray, attention_mask: np.ndarray, new_tokens: int,
               eot_id: int | None = None) -> np.ndarray:
        with self.autocast():
            return self.decoder.greedy(input_ids, attention_mask, new_tokens, eot_id)


def torch_device(settings: EngineSettings) -> torch.device:
    """The case's torch device, with its thread count and TF32 switch applied."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible to PyTorch")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = settings.uses_tf32
    return torch.device("cuda" if settings.device == "cuda" else "cpu")


def cold_compile_cache() -> tempfile.TemporaryDirectory:
    """An empty inductor cache, so compilation is as cold as JAX's and XLA's in every run."""
    cache = tempfile.TemporaryDirectory(prefix="llmdual-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name
    return cache


class TorchRuntime(Runtime):
    """llmdual's PyTorch model on one device; ``compile`` wraps it in ``torch.compile`` (``Module.compile``);
    ``quantize`` replaces it by its int8 copy (``llmdual.quantize``), measured against it on the built-in corpus."""

    def __init__(self, settings: EngineSettings, compile: bool = False, quantize: str | None = None):
        self.device, self.compile, self.model, self.dtype = torch_device(settings), compile, None, torch.float32
        self.quantize, self.quality_cache = quantize, {}
        self.backend = backend("torch")
        if compile:
            self.cache = cold_compile_cache()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def prepare(self, settings: EngineSettings, task: str, kv_cache: bool) -> dict[str, float]:
        self.dtype = DTYPES[settings.dtype]
        started = time.perf_counter()
        model = llmdual.build(settings.config, "torch", task, settings.seed).to(self.device)
        scalars = {"weights_mb": weight_bytes(model) / 2**20}
        if self.quantize:
            model, scalars = quantize_scalars(model, self.quantize, settings, self.quality_cache)
            started += scalars["quality_s"]  # the quality measurement is reported on its own
        if self.compile:
            model.compile()
        self.sync()
        self.model = model
        return {"build_s": time.perf_counter() - started, **scalars}

    def forward(self, ids: np.ndarray, mask: np.ndarray | None) -> Callable[[], Any]:
        model = self.model.eval()
        ids_t = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        mask_t = None if mask is None else torch.as_tensor(mask, dtype=torch.long, device=self.device)

        def run() -> torch.Tensor:
            with torch.inference_mode(), self.autocast():
                out = model(ids_t, mask_t)
            self.sync()
            return out

        return run

    def to_numpy(self, output: torch.Tensor) -> np.ndarray:
        return output.float().cpu().numpy()

    def trainer(self, cfg: TrainConfig) -> Callable[[Batch], tuple[float, float]]:
        return self.backend.trainer(self.model, cfg).step  # Python floats: the step has finished on the device

    def decoder(self, use_cache: bool = True) -> Any:
        decoder = self.backend.decoder(self.model, use_cache, self.compile)
        return decoder if self.dtype == torch.float32 else Autocast(decoder, self.autocast)

    def probe_flops(self) -> float:
        n = PROBE_SIZE[self.device.type]
        a = torch.randn(n, n, device=self.device, dtype=self.dtype)
        return probe(lambda: (torch.matmul(a, a), self.sync()), n)

    def reset_peaks(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_device_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else None

    def release(self) -> None:
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
