"""The registry and the backend contract: which backends and runtimes exist, what each can do (capabilities), the
small protocols a backend implements for each capability, and the one dispatch every call goes through
(``backend(name)``, ``backend_of(model)``).

The registry is the only place a backend or runtime is named: parity's pairs, the CLI's choices, the server's
targets, the benchmark's engines, the export formats, the install hints and the tests' parametrisation are all
derived from it (``backends(capability)``). A new backend is one package ``llmdual/backends/<name>/`` plus one line in
``REGISTRY``.

Framework-free: a backend package is imported only when it is asked for, after checking that its framework is
installed, so ``import llmdual`` never imports torch, tensorflow, keras or jax.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from llmdual.core.config import Config
from llmdual.core.decoding import Decoder
from llmdual.core.lora_spec import LoraSpec
from llmdual.core.recipe import Batch, BatchFn, History, TrainConfig


@runtime_checkable
class Trainer(Protocol):
    """One optimizer step at a time: ``Trainer(model, train_config, optimizer=None, start=0).step(batch)``."""

    def step(self, batch: Batch) -> tuple[float, float]:
        """One AdamW step on a numpy batch; returns (loss, pre-clip global gradient norm)."""
        ...


class Model(Protocol):
    """Capability ``forward``, which every backend has: build a model of a task, move canonical weights in and out,
    run it. Numpy in, numpy out, canonical weight names and layout everywhere."""

    NAME: str

    def build(self, config: Config, task: str) -> Any:
        """An uninitialised native model of the task (``llmdual.build`` sets its weights)."""
        ...

    def get_weights(self, model: Any) -> dict[str, np.ndarray]:
        """Float32 numpy copies of every weight, by canonical name and layout."""
        ...

    def set_weights(self, model: Any, weights: Mapping[str, np.ndarray]) -> None:
        """Assign canonical weights (validated by ``llmdual.core.weights.check_weights`` first)."""
        ...

    def forward(self, model: Any, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """Inference-mode logits (compiled where the framework compiles): float32, float64 from the reference."""
        ...

    def intermediates(self, model: Any, input_ids: np.ndarray,
                      attention_mask: np.ndarray | None = None) -> list[np.ndarray]:
        """Activations in stage order, for localising the first divergence between backends."""
        ...

    def weight_bytes(self, model: Any) -> int:
        """Bytes the model's weights take in memory (int8 data and scales once quantized)."""
        ...


class Gradients(Protocol):
    """Capability ``gradients``: the loss and its gradient for every trainable weight."""

    def loss_and_grads(self, model: Any, input_ids: np.ndarray, targets: np.ndarray,
                       attention_mask: np.ndarray | None = None) -> tuple[float, dict[str, np.ndarray]]:
        """Cross-entropy loss (dropout off) and its gradient for every trainable canonical weight (all of them, or
        the adapters alone once the model has LoRA)."""
        ...


class Trains(Protocol):
    """Capability ``training``: a stepwise trainer and the framework's own training loop."""

    def trainer(self, model: Any, cfg: TrainConfig, optimizer: Any = None, start: int = 0) -> Trainer:
        """A ``Trainer`` continuing from optimizer step ``start`` (the schedule's position, AdamW's bias correction)."""
        ...

    def train(self, model: Any, get_batch: BatchFn, cfg: TrainConfig, val: Sequence[Batch],
              resume: str | Path | None = None) -> History:
        """Run the training loop the framework's way; ``llmdual.train`` calls it."""
        ...


class Decodes(Protocol):
    """Capability ``decoding``: incremental decoding with a static KV cache."""

    def decoder(self, model: Any, use_cache: bool = True, compile: bool = False) -> Decoder:
        """A ``llmdual.core.decoding.Decoder`` over the model (static KV cache, or recomputing the prefix);
        ``compile``: the framework's optimising compiler for the step (torch.compile, XLA on TensorFlow)."""
        ...


class DataParallel(Protocol):
    """Capability ``data-parallel``: training over several ranks or replicas with the framework's own engine."""

    def data_parallel_scope(self, data_parallel: int) -> AbstractContextManager[None]:
        """Where a ``data_parallel``-rank run builds its model and trains (``TrainConfig.data_parallel``)."""
        ...


class Adapts(Protocol):
    """Capability ``lora``: low-rank adapters on the projections."""

    def add_lora(self, model: Any, spec: LoraSpec) -> None:
        """Give the spec's target projections zero LoRA adapters and freeze every other weight."""
        ...

    def remove_lora(self, model: Any) -> None:
        """Drop the model's adapters and unfreeze it (``llmdual.merge_lora`` folds them in first)."""
        ...


class Quantizes(Protocol):
    """Capability ``int8``: native int8 quantization of the projections."""

    def quantize(self, model: Any, scheme: str) -> None:
        """Quantize the model's projections in place to ``scheme`` (int8: per-channel weights, per-token dynamic
        activations; ``llmdual.quantize`` checks the scheme and the model first)."""
        ...


class ExportsOnnx(Protocol):
    """Capability ``onnx``: an ONNX graph of the model, and the native outputs it is verified against."""

    def onnx_graph(self, model: Any, sig: Any, example: dict[str, np.ndarray], opset: int, dynamic: bool) -> Any:
        """The ``onnx.ModelProto`` of the model with the signature's inputs and outputs (needs the onnx extra)."""
        ...

    def onnx_opsets(self) -> range:
        """The opsets this backend's ONNX exporter can emit."""
        ...

    def run_signature(self, model: Any, sig: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The native model's outputs for an export signature's feeds: the verification reference."""
        ...


class ExportsNative(Protocol):
    """Capability ``native-export``: the framework's own deployment formats (``BackendInfo.formats``)."""

    def export_native(self, model: Any, sig: Any, example: dict[str, np.ndarray], path: str, format: str,
                      metadata: dict[str, str]) -> None:
        """Write ``model`` at ``path`` in a native ``format`` with the signature's inputs, outputs and dynamic axes,
        traced on ``example``, carrying ``metadata``."""
        ...

    def load_native(self, path: str, format: str) -> tuple[Callable[[dict[str, np.ndarray]], list[np.ndarray]],
                                                          dict[str, str]]:
        """A native export's runner (feeds by input name in, outputs in signature order out) and its metadata."""
        ...

    def run_signature(self, model: Any, sig: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The native model's outputs for an export signature's feeds: the verification reference."""
        ...


# capability -> (the protocol a backend offering it implements, the verb an error message uses)
CAPABILITIES: dict[str, tuple[type, str]] = {
    "forward": (Model, "run models"),
    "gradients": (Gradients, "compute gradients"),
    "training": (Trains, "train"),
    "decoding": (Decodes, "decode with a KV cache"),
    "data-parallel": (DataParallel, "train data-parallel"),
    "lora": (Adapts, "take LoRA adapters"),
    "int8": (Quantizes, "quantize to int8"),
    "onnx": (ExportsOnnx, "export to ONNX"),
    "native-export": (ExportsNative, "export to native formats"),
    "reference": (Model, "serve as the float64 reference"),
}
EVERYTHING = "forward gradients training decoding data-parallel lora int8 onnx native-export"


@dataclass(frozen=True)
class NativeFormat:
    """A deployment format a backend writes natively: a ``file`` or a ``folder``, the file suffix its loader needs,
    and why it exports the plain LM only (empty when it exports every model)."""

    name: str
    kind: str
    suffix: str = ""
    plain_lm_only: str = ""


@dataclass(frozen=True)
class BackendInfo:
    """One backend: its name (package ``llmdual.backends.<name>``), the frameworks it imports and the pip extra that
    installs them, what it can do (space-separated ``CAPABILITIES``), and its native export formats. ``host``: the
    environment variable choosing the library the framework runs on, with each value's extra (Keras' backends)."""

    name: str
    needs: tuple[str, ...]
    extra: str
    capabilities: str
    formats: tuple[NativeFormat, ...] = ()
    host: tuple[str, str, Mapping[str, str]] | None = None  # (variable, default, value -> extra)
    onnx_needs: tuple[str, ...] = ()  # packages its ONNX export needs besides onnx and onnxruntime

    @property
    def package(self) -> str:
        return f"llmdual.backends.{self.name}"

    def offers(self, capability: str) -> bool:
        return capability in self.capabilities.split()


@dataclass(frozen=True)
class RuntimeInfo:
    """One runtime: something that runs an exported artefact of any backend (``package`` implements it), what it
    needs installed, and what it can do (``forward``, ``decoding``)."""

    name: str
    package: str
    needs: tuple[str, ...]
    extra: str
    capabilities: str = field(default="forward decoding")

    def offers(self, capability: str) -> bool:
        return capability in self.capabilities.split()


_PLAIN_LM_LITERT = ("the classifier and the KV-cache decoder step convert to TensorFlow Select ops "
                    "(FlexStridedSlice), which the LiteRT interpreter installed with TensorFlow cannot run")
_KERAS_HOSTS = ("KERAS_BACKEND", "tensorflow", {"tensorflow": "keras", "jax": "jax", "torch": "torch"})

# The backends, in the order every list shows them. A new backend is one line here plus its package.
REGISTRY: dict[str, BackendInfo] = {info.name: info for info in (
    BackendInfo("torch", ("torch",), "torch", EVERYTHING, onnx_needs=("onnxscript",),
                formats=(NativeFormat("torch-export", "file", ".pt2"), NativeFormat("aoti", "file", ".pt2"))),
    BackendInfo("keras", ("keras",), "keras", EVERYTHING, host=_KERAS_HOSTS, onnx_needs=("tf2onnx",),
                formats=(NativeFormat("saved-model", "folder"), NativeFormat("litert", "folder", "", _PLAIN_LM_LITERT))),
    BackendInfo("numpy", (), "", "forward decoding reference"),
)}
# The runtimes of exported artefacts
RUNTIMES: dict[str, RuntimeInfo] = {info.name: info for info in (
    RuntimeInfo("onnx", "llmdual.onnx", ("onnx", "onnxruntime"), "onnx"),
)}


def _unknown(kind: str, name: object, known: Sequence[str]) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(known)}")


def backends(capability: str | None = None) -> list[str]:
    """The registered backends (offering ``capability``, if given), in registry order: every list of backends
    elsewhere comes from here."""
    check_capability(capability)
    return [name for name, info in REGISTRY.items() if capability is None or info.offers(capability)]


def runtimes(capability: str | None = None) -> list[str]:
    """The registered runtimes (offering ``capability``, if given)."""
    check_capability(capability)
    return [name for name, info in RUNTIMES.items() if capability is None or info.offers(capability)]


def targets(capability: str) -> list[str]:
    """What can run a model for ``capability``: the backends offering it, then the runtimes (the CLI's choices for
    generate and evaluate, the server's)."""
    return backends(capability) + runtimes(capability)


def check_capability(capability: str | None) -> None:
    """``ValueError`` naming the capabilities if ``capability`` is not one."""
    if capability is not None and capability not in CAPABILITIES:
        raise _unknown("capability", capability, list(CAPABILITIES))


def check_backend(name: str, capability: str | None = None) -> str:
    """``name`` if it is a registered backend (offering ``capability``, if given); else a one-line ``ValueError``
    naming the choices ("backend 'numpy' does not train; backends that do: torch, keras")."""
    if name not in REGISTRY:
        raise _unknown("backend", name, backends())
    if capability is not None and not REGISTRY[name].offers(capability):
        check_capability(capability)
        able = backends(capability)
        raise ValueError(f"backend {name!r} does not {CAPABILITIES[capability][1]}; backends that do: "
                         f"{', '.join(able) if able else 'none'}")
    return name


def info(name: str) -> BackendInfo:
    """The registry entry of backend ``name``."""
    return REGISTRY[check_backend(name)]


def native_formats(name: str | None = None) -> dict[str, tuple[str, NativeFormat]]:
    """Every native export format (of backend ``name`` only, if given) -> (the backend that writes it, the format)."""
    return {f.name: (b.name, f) for b in REGISTRY.values() if name in (None, b.name) for f in b.formats}


def export_formats(name: str | None = None) -> list[str]:
    """The export formats (of backend ``name``, if given): ``onnx`` where offered, then the native ones."""
    onnx = any(b.offers("onnx") for b in REGISTRY.values() if name in (None, b.name))
    return (["onnx"] if onnx else []) + list(native_formats(name))


def _host(info: BackendInfo) -> str | None:
    """The library a backend's framework runs on in this process (``KERAS_BACKEND``), or None."""
    return None if info.host is None else os.environ.get(info.host[0], info.host[1])


def missing_frameworks(name: str) -> list[str]:
    """Top-level packages a backend needs that are not installed (and the library its framework runs on)."""
    entry = info(name)
    host = _host(entry)
    needs = entry.needs + ((host,) if host else ())
    return [pkg for pkg in needs if importlib.util.find_spec(pkg) is None]


def install_hint(name: str, missing: Sequence[str]) -> str:
    """The pip command installing what backend ``name`` is missing."""
    entry = info(name)
    host = _host(entry)
    extra = entry.extra
    if host is not None:
        host_extra = entry.host[2].get(host, extra)
        extra = extra if entry.needs[0] in missing or host_extra == extra else f"{extra},{host_extra}"
    return f"pip install 'llmdual[{extra}]'"


def backend(name: str, capability: str | None = None) -> Any:
    """The backend package for ``name`` (checked to offer ``capability``, if given); ``ImportError`` naming the extra
    to install if its framework is absent."""
    check_backend(name, capability)
    missing = missing_frameworks(name)
    if missing:
        raise ImportError(f"backend {name!r} needs {', '.join(missing)}, which is not installed; install it with: "
                          f"{install_hint(name, missing)}")
    return importlib.import_module(REGISTRY[name].package)


def backend_name(model: Any) -> str:
    """The name of the backend an llmdual model belongs to; ``TypeError`` for anything else."""
    module = type(model).__module__
    for name, entry in REGISTRY.items():
        if module.startswith(entry.package + "."):
            return name
    raise TypeError(f"expected an llmdual model (built by llmdual.build), got {type(model).__module__}."
                    f"{type(model).__name__}")


def backend_of(model: Any, capability: str | None = None) -> Any:
    """The backend package that implements ``model`` (checked to offer ``capability``, if given)."""
    return backend(backend_name(model), capability)
