"""Which workloads each engine runs, and opening an engine inside a worker (framework-free until opened).

The engine table itself (framework, modules, Keras backend) is :data:`llmdual.bench.results.ENGINES`; this
module adds what an engine cannot do, decided before any process starts, and the factory the worker calls.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from llmdual.bench.workloads import Engine

# (engine, workload) pairs that have no meaning, with the reason shown in the report as a skipped row.
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("torch-compile", "generate"): "llmdual's decoder runs its cached steps eagerly (see torch-eager)",
    ("keras-tensorflow-xla", "generate"): "llmdual's Keras decoder is a tf.function without XLA "
                                          "(see keras-tensorflow)",
    ("ort-torch-export", "train"): "onnxruntime runs exported inference graphs only",
    ("ort-keras-export", "train"): "onnxruntime runs exported inference graphs only",
}

# module, class and constructor arguments of each engine, imported only inside the worker.
_FACTORIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "torch-eager": ("llmdual.bench.engine_torch", "TorchEngine", {"compile": False}),
    "torch-compile": ("llmdual.bench.engine_torch", "TorchEngine", {"compile": True}),
    "keras-tensorflow": ("llmdual.bench.engine_keras", "KerasEngine", {"jit_compile": False}),
    "keras-tensorflow-xla": ("llmdual.bench.engine_keras", "KerasEngine", {"jit_compile": True}),
    "keras-jax": ("llmdual.bench.engine_keras", "KerasEngine", {"jit_compile": True}),
    "keras-torch": ("llmdual.bench.engine_keras", "KerasEngine", {"jit_compile": False}),
    "ort-torch-export": ("llmdual.bench.engine_onnx", "OnnxEngine", {"source": "torch"}),
    "ort-keras-export": ("llmdual.bench.engine_onnx", "OnnxEngine", {"source": "keras"}),
}


def not_applicable(engine: str, workload: str, settings: Mapping[str, Any]) -> str | None:
    """Why ``engine`` cannot run ``workload`` with these settings at all (so it is skipped), or None."""
    if (engine, workload) in NOT_APPLICABLE:
        return f"not applicable: {NOT_APPLICABLE[engine, workload]}"
    dtype, device = settings.get("dtype", "float32"), settings.get("device", "cpu")
    if dtype == "float16" and device != "cuda":
        return "not applicable: float16 needs a CUDA GPU (use --precision bf16 on CPU)"
    if engine.startswith("ort-") and dtype != "float32":
        return f"not applicable: the onnxruntime engines run the float32 export, not {dtype}"
    if workload == "generate" and settings["seq_len"] + settings["new_tokens"] - 1 > settings["config"]["max_seq_len"]:
        return (f"not applicable: a {settings['seq_len']}-token prompt and {settings['new_tokens']} new tokens "
                f"exceed max_seq_len {settings['config']['max_seq_len']}")
    return None


def open_engine(name: str, settings: Mapping[str, Any]) -> Engine:
    """The engine ``name`` for a worker process, its framework imported now (threads and device from settings)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown engine {name!r}; choose one of {sorted(_FACTORIES)}")
    module, cls, kwargs = _FACTORIES[name]
    return getattr(importlib.import_module(module), cls)(settings, **kwargs)
