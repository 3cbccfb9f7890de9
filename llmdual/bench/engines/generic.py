"""The generic engine of a backend without specialised rows: the public API as a user calls it (``llmdual.build``,
``llmdual.forward``, the backend's ``decoder`` and ``trainer``), timed like every other engine. What the backend does
not offer never reaches it: the engine table skips those workloads by the backend's capabilities."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import llmdual
from llmdual.bench.engines.runtime import EngineSettings, Runtime
from llmdual.bench.timing import PROBE_SIZE, probe
from llmdual.contract import backend as backend_package
from llmdual.core.recipe import Batch, TrainConfig
from llmdual.quantize import weight_bytes


class ApiRuntime(Runtime):
    """Backend ``backend``'s models through llmdual's public functions, on the CPU."""

    def __init__(self, settings: EngineSettings, backend: str):
        if settings.device == "cuda":
            raise RuntimeError(f"the {backend} engine drives llmdual's public API on the CPU; use --device cpu")
        self.name, self.package, self.model = backend, backend_package(backend), None

    def prepare(self, settings: EngineSettings, task: str, kv_cache: bool) -> dict[str, float]:
        started = time.perf_counter()
        self.model = llmdual.build(settings.config, self.name, task, settings.seed)
        return {"build_s": time.perf_counter() - started, "weights_mb": weight_bytes(self.model) / 2**20}

    def forward(self, ids: np.ndarray, mask: np.ndarray | None) -> Callable[[], Any]:
        return lambda: llmdual.forward(self.model, ids, mask)  # numpy logits: the work is done

    def trainer(self, cfg: TrainConfig) -> Callable[[Batch], tuple[float, float]]:
        return self.package.trainer(self.model, cfg).step

    def decoder(self, use_cache: bool = True) -> Any:
        return self.package.decoder(self.model, use_cache)

    def probe_flops(self) -> float:
        """A float32 numpy matmul: the CPU's peak as the BLAS numpy uses reaches it."""
        n = PROBE_SIZE["cpu"]
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        return probe(lambda: a @ a, n)

    def release(self) -> None:
        self.model = None
        gc.collect()
