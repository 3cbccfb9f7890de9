"""The one engine table: llmdual's engines and the reference implementations, as rows of the same table.

Framework-free: a row names the runtime class the worker opens (``module:Class``), imported only there.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Top-level module -> the llmdual extra that installs it.
EXTRAS: dict[str, str] = {
    "torch": "torch", "torchao": "torch", "keras": "keras", "tensorflow": "keras", "jax": "jax", "jaxlib": "jax",
    "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "tf2onnx": "onnx", "transformers": "reference",
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
    quantized: bool = False  # int8 weights and activations: other numerics, so outside the framework verdict


_TORCH, _KERAS = "llmdual.bench.engine_torch:TorchRuntime", "llmdual.bench.engine_keras:KerasRuntime"
_ORT, _REF = "llmdual.bench.engine_onnx:OrtRuntime", "llmdual.bench.engine_reference"
_ORT_SKIPS = {"train": "onnxruntime runs exported inference graphs only",
              "kv": "the ONNX decoder graph always uses its cache"}
_REF_SKIPS = {"classify": "the reference GPT-2s are language models only",
              "kv": "the KV-cache bar measures llmdual's own decoders"}
_KERAS_ORT = ("keras", "tensorflow", "tf2onnx", "onnx", "onnxruntime")
_INT8_SKIPS = {"train": "an int8 model only runs inference", "classify": "int8 is measured on the language model",
               "kv": "the KV-cache bar compares llmdual's float32 decoders"}
# An int8 engine's largest accepted |logit - float32 logit|: weights and activations rounded to 1/254 of their
# per-channel / per-token range move the small preset's seed-initialised logits (about +-2) by 0.04 at 8 x 256
# (measured 0.040 torchao, 0.041 Keras; 0.051 on the corpus blocks); 0.2 leaves room for other shapes and seeds and
# still refuses a wrong scale or a broken layer, which move them by 1 or more. Greedy tokens are then not compared:
# a near-tie may flip.
INT8_TOLERANCE = 0.2


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
    Engine("torch-int8", "PyTorch", ("torch", "torchao"), _TORCH, {"compile": False, "quantize": "int8"},
           skips=_INT8_SKIPS, tolerance=INT8_TOLERANCE, quantized=True,
           note="torchao Int8DynamicActivationInt8WeightConfig, eager"),
    Engine("keras-int8", "Keras/TensorFlow", ("keras", "tensorflow"), _KERAS,
           {"jit_compile": False, "quantize": "int8"}, "tensorflow", skips=_INT8_SKIPS, tolerance=INT8_TOLERANCE,
           quantized=True,
           note="model.quantize('int8') on the Dense layers, tf.function"),
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
LLMDUAL_ENGINES = tuple(name for name, e in ENGINES.items() if not e.reference and not e.quantized)
QUANTIZED_ENGINES = tuple(name for name, e in ENGINES.items() if e.quantized)


def framework_of(engine: str) -> str:
    """The framework an engine counts for (an unknown engine stands for itself)."""
    return ENGINES[engine].framework if engine in ENGINES else engine


def is_reference(engine: str) -> bool:
    """Whether ``engine`` is a reference implementation rather than llmdual."""
    return engine in ENGINES and ENGINES[engine].reference


def is_quantized(engine: str) -> bool:
    """Whether ``engine`` runs an int8 model (compared with float32 on quality, kept out of the verdict)."""
    return engine in ENGINES and ENGINES[engine].quantized


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


def quantize_scalars(model: Any, scheme: str, settings: Mapping[str, Any], cache: dict[str, Any]
                     ) -> tuple[Any, dict[str, float]]:
    """The quantized copy of a case's float32 ``model`` and its figures: weight sizes before and after, and its quality
    against ``model`` on the built-in corpus (``llmdual.quantize.measure``, computed once per model in ``cache``;
    ``quality_s``: the seconds that took, not part of the build)."""
    from llmdual.quantize import corpus_batches, measure, quantized_copy, weight_bytes

    quantized = quantized_copy(model, scheme)
    key = json.dumps([settings["config"], settings["seed"], scheme], sort_keys=True)
    started = time.perf_counter()
    if key not in cache:
        cache[key] = measure(model, quantized, corpus_batches(model.config)).to_dict()
    q = cache[key]
    return quantized, {"quality_s": time.perf_counter() - started, "weights_mb": weight_bytes(quantized) / 2**20,
                       "fp32_weights_mb": weight_bytes(model) / 2**20,
                       "perplexity_fp32": q["perplexity"], "perplexity_int8": q["quantized_perplexity"],
                       "perplexity_delta": q["perplexity_delta"], "top1_agreement": q["top1_agreement"],
                       "max_abs_logit_diff": q["max_abs_logit_diff"]}


def open_engine(name: str, settings: Mapping[str, Any]) -> Any:
    """The runtime of engine ``name`` for a worker process, its framework imported now."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {sorted(ENGINES)}")
    module, cls = ENGINES[name].runtime.split(":")
    return getattr(importlib.import_module(module), cls)(settings, **ENGINES[name].options)
