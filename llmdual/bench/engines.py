"""The one engine table: llmdual's engines and the reference implementations, as rows of the same table.

Framework-free: a row names the runtime class the worker opens (``module:Class``), imported only there.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Top-level module -> the llmdual extra that installs it.
EXTRAS: dict[str, str] = {
    "torch": "torch", "keras": "keras", "tensorflow": "keras", "jax": "jax", "jaxlib": "jax", "onnx": "onnx",
    "onnxruntime": "onnx", "onnxscript": "onnx", "tf2onnx": "onnx", "transformers": "reference",
    "keras_hub": "reference",
}


@dataclass(frozen=True)
class Engine:
    """One way of running the model: its framework, what it imports, the runtime the worker opens and with what
    options, and the workloads it cannot run (and why)."""

    name: str
    framework: str
    modules: tuple[str, ...]
    runtime: str  # "module:Class", opened in the worker with (settings, **options)
    options: Mapping[str, Any] = field(default_factory=dict)
    keras_backend: str | None = None
    reference: bool = False  # a reference implementation (HF, keras-hub, nanoGPT), not llmdual
    skips: Mapping[str, str] = field(default_factory=dict)  # workload -> why it does not apply
    tolerance: float | None = None  # replaces the precision's parity tolerance where the model itself differs
    note: str = ""
    needs: str = ""  # the non-default setting this engine stands for (``jit_compile=True``), named in verdicts
    default: str | None = None  # the engine of the same framework with its default settings


_TORCH, _KERAS = "llmdual.bench.engine_torch:TorchRuntime", "llmdual.bench.engine_keras:KerasRuntime"
_ORT, _REF = "llmdual.bench.engine_onnx:OrtRuntime", "llmdual.bench.engine_reference"
_ORT_SKIPS = {"train": "onnxruntime runs exported inference graphs only",
              "kv": "the ONNX decoder graph always uses its cache"}
_REF_SKIPS = {"classify": "the reference GPT-2s are language models only",
              "kv": "the KV-cache bar measures llmdual's own decoders"}
_KERAS_ORT = ("keras", "tensorflow", "tf2onnx", "onnx", "onnxruntime")


def _kerashub(suffix: str, backend: str, module: str, jit_compile: bool) -> Engine:
    return Engine(f"kerashub-{suffix}", f"keras-hub/{suffix.split('-')[0]}", ("keras", module, "keras_hub"),
                  "llmdual.bench.engine_keras:KerasHubRuntime", {"jit_compile": jit_compile}, backend, True, _REF_SKIPS)


ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine("torch-eager", "PyTorch", ("torch",), _TORCH, {"compile": False}),
    Engine("torch-compile", "PyTorch", ("torch",), _TORCH, {"compile": True}, needs="torch.compile",
           default="torch-eager"),
    Engine("keras-tensorflow", "Keras/TensorFlow", ("keras", "tensorflow"), _KERAS, {"jit_compile": False},
           "tensorflow"),
    Engine("keras-tensorflow-xla", "Keras/TensorFlow", ("keras", "tensorflow"), _KERAS, {"jit_compile": True},
           "tensorflow", needs="jit_compile=True", default="keras-tensorflow"),
    Engine("keras-jax", "Keras/JAX", ("keras", "jax", "jaxlib"), _KERAS, {"jit_compile": True}, "jax"),
    Engine("keras-torch", "Keras/PyTorch", ("keras", "torch"), _KERAS, {"jit_compile": False}, "torch"),
    Engine("ort-torch-export", "ONNX Runtime", ("torch", "onnx", "onnxscript", "onnxruntime"), _ORT,
           {"source": "torch"}, skips=_ORT_SKIPS),
    Engine("ort-keras-export", "ONNX Runtime", _KERAS_ORT, _ORT, {"source": "keras"}, "tensorflow", skips=_ORT_SKIPS),
    Engine("hf-eager", "HF/PyTorch", ("torch", "transformers"), f"{_REF}:HFRuntime", {"compile": False},
           reference=True, skips=_REF_SKIPS, note="transformers GPT2LMHeadModel, its defaults (SDPA, fused AdamW)"),
    Engine("hf-compile", "HF/PyTorch", ("torch", "transformers"), f"{_REF}:HFRuntime", {"compile": True},
           reference=True, skips={**_REF_SKIPS, "generate": "generate under torch.compile recompiles per step "
                                  "(see hf-eager)"}, note="GPT2LMHeadModel under torch.compile"),
    _kerashub("tensorflow", "tensorflow", "tensorflow", False),
    _kerashub("tensorflow-xla", "tensorflow", "tensorflow", True),
    _kerashub("jax", "jax", "jax", True),
    _kerashub("torch", "torch", "torch", False),
    Engine("nanogpt", "nanoGPT/PyTorch", ("torch",), f"{_REF}:NanoGPTRuntime", reference=True, tolerance=1e-2,
           skips={**_REF_SKIPS, "generate": "nanoGPT's generate recomputes the prefix (no KV cache)"},
           note="a user's checkout (--nanogpt); exact GELU, hence tolerance 1e-2; infer is forward with targets"),
)}
LLMDUAL_ENGINES = tuple(name for name, e in ENGINES.items() if not e.reference)


def framework_of(engine: str) -> str:
    """The framework an engine counts for (an unknown engine stands for itself)."""
    return ENGINES[engine].framework if engine in ENGINES else engine


def is_reference(engine: str) -> bool:
    """Whether ``engine`` is a reference implementation rather than llmdual."""
    return engine in ENGINES and ENGINES[engine].reference


def skip_reason(engine: str, settings: Mapping[str, Any] | None = None) -> str | None:
    """Why ``engine`` cannot run on this machine (a missing module, naming its extra; no nanoGPT path), or None."""
    if engine not in ENGINES:
        return None
    missing = [m for m in ENGINES[engine].modules if importlib.util.find_spec(m) is None]
    if missing:
        extras = ",".join(sorted({EXTRAS.get(m, m) for m in missing}))
        return f"not installed: {', '.join(missing)}; install llmdual[{extras}]: pip install 'llmdual[{extras}]'"
    if engine == "nanogpt":
        path = (settings or {}).get("nanogpt")
        if not path:
            return "nanoGPT is not downloadable at run time: pass --nanogpt PATH to a checkout's model.py"
        if not Path(path).exists():
            return f"--nanogpt path does not exist: {path}"
    return None


def not_applicable(engine: str, workload: str, settings: Mapping[str, Any]) -> str | None:
    """Why ``engine`` cannot run ``workload`` with these settings at all (so it is skipped), or None."""
    row = ENGINES.get(engine)
    if row is not None and workload in row.skips:
        return f"not applicable: {row.skips[workload]}"
    dtype, device = settings.get("dtype", "float32"), settings.get("device", "cpu")
    if dtype == "float16" and device != "cuda":
        return "not applicable: float16 needs a CUDA GPU (use --precision bf16 on CPU)"
    if (engine.startswith("ort-") or (row is not None and row.reference)) and dtype != "float32":
        return f"not applicable: {engine} runs float32 here, not {dtype}"
    limit = settings["config"]["max_seq_len"]
    prompt = settings.get("prompt_len") or settings["seq_len"]
    if workload == "generate" and prompt + settings["new_tokens"] - 1 > limit:
        return (f"not applicable: a {prompt}-token prompt and {settings['new_tokens']} new tokens exceed "
                f"max_seq_len {limit}")
    return None


def open_engine(name: str, settings: Mapping[str, Any]) -> Any:
    """The runtime of engine ``name`` for a worker process, its framework imported now."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {sorted(ENGINES)}")
    module, cls = ENGINES[name].runtime.split(":")
    return getattr(importlib.import_module(module), cls)(settings, **ENGINES[name].options)
