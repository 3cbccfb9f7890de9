"""The one engine table: llmdual's engines grouped under the registry's backends, onnxruntime over each backend's
ONNX export, and the reference implementations, as rows of the same table.

Derived from the registry (``llmdual.contract``): a backend's rows are its specialised ones, or, for a backend with
none, a generic row driving the public API; what a row cannot run follows from its backend's capabilities; the
install hint of a missing framework names the registry's extra. Framework-free: a row names the runtime class the
worker opens (``module:Class``), imported only there.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmdual import contract

if TYPE_CHECKING:
    from llmdual.bench.engines.runtime import EngineSettings

# The capability each workload needs of a backend (``llmdual.contract.CAPABILITIES``).
WORKLOAD_CAPABILITIES = {"train": "training", "infer": "forward", "classify": "forward", "generate": "decoding",
                         "kv": "decoding"}
# Modules only the reference implementations import, and the extra that installs them (the registry knows the rest).
REFERENCE_EXTRAS = {"transformers": "reference", "keras_hub": "reference"}


@dataclass(frozen=True)
class Engine:
    """One way of running the model: its framework, what it imports, the runtime the worker opens and with what
    options, the registry backend it runs (and the library that backend's framework runs on), and the workloads it
    cannot run (and why)."""

    name: str
    framework: str
    modules: tuple[str, ...]
    runtime: str  # "module:Class", opened in the worker with (settings, **options)
    options: Mapping[str, Any] = field(default_factory=dict)
    backend: str | None = None  # the registry backend whose model it runs; None: a reference implementation's own
    host: str | None = None  # the value of the backend's host variable (KERAS_BACKEND) in the worker
    reference: bool = False  # a reference implementation (HF, keras-hub, nanoGPT), not llmdual
    generic: bool = False  # the public API over a backend without specialised rows (opt-in, not in the default run)
    mixed_precision: bool = True  # runs bf16/fp16 (autocast, Keras' policy); False: float32 only
    skips: Mapping[str, str] = field(default_factory=dict)  # workload -> why it does not apply
    tolerance: float | None = None  # replaces the precision's parity tolerance where the model itself differs
    note: str = ""
    needs: str = ""  # the non-default setting this engine stands for (``jit_compile=True``), named in verdicts
    default: str | None = None  # the engine of the same framework with its default settings
    quantized: bool = False  # int8 weights and activations: other numerics, so outside the framework verdict


_TORCH, _KERAS = "llmdual.bench.engines.torch:TorchRuntime", "llmdual.bench.engines.keras:KerasRuntime"
_ORT, _REF = "llmdual.bench.engines.onnx:OrtRuntime", "llmdual.bench.engines.reference"
_GENERIC = "llmdual.bench.engines.generic:ApiRuntime"
_ORT_SKIPS = {"train": "onnxruntime runs exported inference graphs only",
              "kv": "the ONNX decoder graph always uses its cache"}
_REF_SKIPS = {"classify": "the reference GPT-2s are language models only",
              "kv": "the KV-cache bar measures llmdual's own decoders"}
_INT8_SKIPS = {"train": "an int8 model only runs inference", "classify": "int8 is measured on the language model",
               "kv": "the KV-cache bar compares llmdual's float32 decoders"}
# An int8 engine's largest accepted |logit - float32 logit|: weights and activations rounded to 1/254 of their
# per-channel / per-token range move the small preset's seed-initialised logits (about +-2) by 0.04 at 8 x 256
# (measured 0.040 torchao, 0.041 Keras; 0.051 on the corpus blocks); 0.2 leaves room for other shapes and seeds and
# still refuses a wrong scale or a broken layer, which move them by 1 or more. Greedy tokens are then not compared:
# a near-tie may flip.
INT8_TOLERANCE = 0.2
# nanoGPT's exact GELU vs GPT-2's tanh approximation: logits of the same weights differ by up to ~1e-3.
NANOGPT_TOLERANCE = 1e-2


def _modules(backend: str, host: str | None = None, *more: str) -> tuple[str, ...]:
    """What a row on ``backend`` imports: the registry's frameworks for it, the library they run on, ``more``."""
    return tuple(dict.fromkeys((*contract.info(backend).needs, *((host,) if host else ()), *more)))


def _keras(name: str, framework: str, host: str, jit_compile: bool, **more: Any) -> Engine:
    options = {"jit_compile": jit_compile, **({"quantize": "int8"} if more.get("quantized") else {})}
    return Engine(name, framework, _modules("keras", host), _KERAS, options, "keras", host, **more)


def _kerashub(host: str, jit_compile: bool, suffix: str = "") -> Engine:
    """keras-hub's GPT-2 on Keras' ``host`` library, named ``kerashub-<host><suffix>``."""
    return Engine(f"kerashub-{host}{suffix}", f"keras-hub/{host}", _modules("keras", host, "keras_hub"),
                  "llmdual.bench.engines.keras:KerasHubRuntime", {"jit_compile": jit_compile}, "keras", host,
                  reference=True, mixed_precision=False, skips=_REF_SKIPS)


def _specialised() -> tuple[Engine, ...]:
    """llmdual's engines tuned for one backend each: its framework's compilers, libraries and int8."""
    return (
        Engine("torch-eager", "PyTorch", _modules("torch"), _TORCH, {"compile": False}, "torch"),
        Engine("torch-compile", "PyTorch", _modules("torch"), _TORCH, {"compile": True}, "torch",
               needs="torch.compile", default="torch-eager"),
        Engine("torch-int8", "PyTorch", _modules("torch", None, "torchao"), _TORCH,
               {"compile": False, "quantize": "int8"}, "torch", skips=_INT8_SKIPS, tolerance=INT8_TOLERANCE,
               quantized=True, note="torchao Int8DynamicActivationInt8WeightConfig, eager"),
        _keras("keras-tensorflow", "Keras/TensorFlow", "tensorflow", False),
        _keras("keras-tensorflow-xla", "Keras/TensorFlow", "tensorflow", True, needs="jit_compile=True",
               default="keras-tensorflow"),
        _keras("keras-jax", "Keras/JAX", "jax", True),
        _keras("keras-torch", "Keras/PyTorch", "torch", False),
        _keras("keras-int8", "Keras/TensorFlow", "tensorflow", False, skips=_INT8_SKIPS, tolerance=INT8_TOLERANCE,
               quantized=True, note="model.quantize('int8') on the Dense layers, tf.function"),
    )


def _generic(backend: str) -> Engine:
    """The row of a backend without specialised rows: ``llmdual.forward`` and the backend's decoder and trainer, as
    a user calls them; what the backend does not offer is skipped by its capabilities."""
    entry = contract.info(backend)
    host = entry.host[1] if entry.host else None
    return Engine(backend, backend, _modules(backend, host), _GENERIC, {"backend": backend}, backend, host,
                  generic=True, mixed_precision=False,
                  note=f"llmdual's public API on the {backend} backend (no specialised engine)")


def _onnxruntime(source: str) -> Engine:
    """onnxruntime over ``source``'s ONNX export, built with the default library of its framework."""
    entry = contract.info(source)
    host = entry.host[1] if entry.host else None
    modules = _modules(source, host, *entry.onnx_needs, *contract.RUNTIMES["onnx"].needs)
    return Engine(f"ort-{source}-export", "ONNX Runtime", modules, _ORT, {"source": source}, source, host,
                  mixed_precision=False, skips=_ORT_SKIPS)


def _references() -> tuple[Engine, ...]:
    return (
        Engine("hf-eager", "HF/PyTorch", _modules("torch", None, "transformers"), f"{_REF}:HFRuntime",
               {"compile": False}, reference=True, mixed_precision=False, skips=_REF_SKIPS,
               note="transformers GPT2LMHeadModel, its defaults (SDPA, fused AdamW)"),
        Engine("hf-compile", "HF/PyTorch", _modules("torch", None, "transformers"), f"{_REF}:HFRuntime",
               {"compile": True}, reference=True, mixed_precision=False,
               skips={**_REF_SKIPS, "generate": "generate under torch.compile recompiles per step (see hf-eager)"},
               note="GPT2LMHeadModel under torch.compile"),
        _kerashub("tensorflow", False),
        _kerashub("tensorflow", True, "-xla"),
        _kerashub("jax", True),
        _kerashub("torch", False),
        Engine("nanogpt", "nanoGPT/PyTorch", _modules("torch"), f"{_REF}:NanoGPTRuntime", reference=True,
               mixed_precision=False, tolerance=NANOGPT_TOLERANCE,
               skips={**_REF_SKIPS, "generate": "nanoGPT's generate recomputes the prefix (no KV cache)"},
               note="a user's checkout (--nanogpt); exact GELU, hence tolerance 1e-2; infer is forward with targets"),
    )


def llmdual_rows(backend: str) -> tuple[Engine, ...]:
    """The engines grouped under registered backend ``backend``: its specialised rows, else its generic row."""
    return tuple(e for e in _specialised() if e.backend == contract.check_backend(backend)) or (_generic(backend),)


def build_table() -> dict[str, Engine]:
    """Every engine by name from the registry as it is now: each backend's rows in registry order, onnxruntime over
    each ONNX export, then the reference implementations."""
    rows = [row for name in contract.backends() for row in llmdual_rows(name)]
    rows += [_onnxruntime(name) for name in contract.backends("onnx")]
    return {e.name: e for e in (*rows, *_references())}


ENGINES: dict[str, Engine] = build_table()
# The default run: llmdual's specialised float engines (int8, generic and reference rows are opt-in).
LLMDUAL_ENGINES = tuple(name for name, e in ENGINES.items() if not (e.reference or e.quantized or e.generic))
QUANTIZED_ENGINES = tuple(name for name, e in ENGINES.items() if e.quantized)


def _module_extras() -> dict[str, str]:
    """Top-level module -> the llmdual extra that installs it, from the registry: each backend's frameworks and
    the libraries they run on, each runtime's packages and what the ONNX exports need besides."""
    extras: dict[str, str] = {}
    for name in contract.backends():
        entry = contract.info(name)
        extras.update(dict.fromkeys(entry.needs, entry.extra))
        extras.update(entry.host[2] if entry.host else {})
        extras.update(dict.fromkeys(entry.onnx_needs, contract.RUNTIMES["onnx"].extra))
    for runtime in contract.RUNTIMES.values():
        extras.update(dict.fromkeys(runtime.needs, runtime.extra))
    return extras


MODULE_EXTRAS: dict[str, str] = {**_module_extras(), **REFERENCE_EXTRAS}


def framework_of(engine: str) -> str:
    """The framework an engine counts for (an unknown engine stands for itself)."""
    return ENGINES[engine].framework if engine in ENGINES else engine


def is_reference(engine: str) -> bool:
    """Whether ``engine`` is a reference implementation rather than llmdual."""
    return engine in ENGINES and ENGINES[engine].reference


def is_quantized(engine: str) -> bool:
    """Whether ``engine`` runs an int8 model (compared with float32 on quality, kept out of the verdict)."""
    return engine in ENGINES and ENGINES[engine].quantized


def host_env(engine: str) -> dict[str, str]:
    """The variable choosing the library ``engine``'s framework runs on, set for its worker (``KERAS_BACKEND``)."""
    row = ENGINES.get(engine)
    if row is None or row.host is None or row.backend is None:
        return {}
    return {contract.info(row.backend).host[0]: row.host}


def _extra(row: Engine, module: str) -> str:
    """The extra installing ``module``; a module the registry does not name comes with the row's backend."""
    return MODULE_EXTRAS.get(module) or (contract.info(row.backend).extra if row.backend else module)


def skip_reason(engine: str, nanogpt: str | None = None) -> str | None:
    """Why ``engine`` cannot run on this machine (a missing module, naming its extra; no ``nanogpt`` path), or None."""
    row = ENGINES.get(engine)
    if row is None:
        return None
    missing = [m for m in row.modules if importlib.util.find_spec(m) is None]
    if missing:
        extras = ",".join(sorted({_extra(row, m) for m in missing}))
        return f"not installed: {', '.join(missing)}; install llmdual[{extras}]: pip install 'llmdual[{extras}]'"
    if engine == "nanogpt":
        if not nanogpt:
            return "nanoGPT is not downloadable at run time: pass --nanogpt PATH to a checkout's model.py"
        if not Path(nanogpt).exists():
            return f"--nanogpt path does not exist: {nanogpt}"
    return None


def unsupported(engine: str, workload: str) -> str | None:
    """Why ``engine`` never runs ``workload``, or None: the row's own reason, else what its backend does not offer
    (``llmdual.contract.check_backend``'s line, naming the backends that do)."""
    row = ENGINES.get(engine)
    if row is None:
        return None
    if workload in row.skips:
        return f"not applicable: {row.skips[workload]}"
    if row.backend is not None:
        try:
            contract.check_backend(row.backend, WORKLOAD_CAPABILITIES[workload])
        except ValueError as error:
            return f"not supported: {error}"
    return None


def open_engine(name: str, settings: EngineSettings) -> Any:
    """The runtime of engine ``name`` for a worker process, its framework imported now."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {sorted(ENGINES)}")
    module, cls = ENGINES[name].runtime.split(":")
    return getattr(importlib.import_module(module), cls)(settings, **ENGINES[name].options)
