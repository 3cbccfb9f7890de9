"""The backend contract and its registry: what a backend provides (``Backend``, one typed Protocol), which
backends exist, and the one dispatch every call goes through (``backend(name)``, ``backend_of(model)``).

Framework-free: a backend package is imported only when it is asked for, after checking that its framework is
installed, so ``import llmdual`` never imports torch, tensorflow, keras or jax.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from llmdual.core.config import Config

if TYPE_CHECKING:
    from llmdual.core.decoding import Decoder
    from llmdual.core.lora_spec import LoraSpec
    from llmdual.core.recipe import Batch, BatchFn, History, TrainConfig


@runtime_checkable
class Trainer(Protocol):
    """One optimizer step at a time: ``Trainer(model, train_config, optimizer=None, start=0).step(batch)``."""

    def step(self, batch: Batch) -> tuple[float, float]:
        """One AdamW step on a numpy batch; returns (loss, pre-clip global gradient norm)."""
        ...


class Backend(Protocol):
    """What each backend package (``llmdual.torch_backend``, ``llmdual.keras_backend``) implements, with the
    same signatures; numpy in, numpy out, canonical weight names and layout everywhere."""

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
        """Inference-mode float32 logits (compiled where the framework compiles)."""
        ...

    def loss_and_grads(self, model: Any, input_ids: np.ndarray, targets: np.ndarray,
                       attention_mask: np.ndarray | None = None) -> tuple[float, dict[str, np.ndarray]]:
        """Cross-entropy loss (dropout off) and its gradient for every trainable canonical weight (all of them, or
        the adapters alone once the model has LoRA)."""
        ...

    def intermediates(self, model: Any, input_ids: np.ndarray,
                      attention_mask: np.ndarray | None = None) -> list[np.ndarray]:
        """Activations in stage order, for localising the first divergence between backends."""
        ...

    def decoder(self, model: Any, use_cache: bool = True, compile: bool = False) -> Decoder:
        """A ``llmdual.core.decoding.Decoder`` over the model (static KV cache, or recomputing the prefix); ``compile``:
        the framework's optimising compiler for the step (torch.compile, XLA on TensorFlow)."""
        ...

    def trainer(self, model: Any, cfg: TrainConfig, optimizer: Any = None, start: int = 0) -> Trainer:
        """A ``Trainer`` continuing from optimizer step ``start`` (the schedule's position, AdamW's bias correction)."""
        ...

    def train(self, model: Any, get_batch: BatchFn, cfg: TrainConfig, val: Sequence[Batch],
              resume: str | Path | None = None) -> History:
        """Run the training loop the framework's way; ``llmdual.train`` calls it."""
        ...

    def data_parallel_scope(self, data_parallel: int) -> AbstractContextManager[None]:
        """Where a ``data_parallel``-rank run builds its model and trains (``TrainConfig.data_parallel``): PyTorch
        joins torchrun's process group, Keras sets its distribution (JAX) or strategy (TensorFlow)."""
        ...

    def add_lora(self, model: Any, spec: LoraSpec) -> None:
        """Give the spec's target projections zero LoRA adapters and freeze every other weight (``llmdual.add_lora``
        sets their values)."""
        ...

    def remove_lora(self, model: Any) -> None:
        """Drop the model's adapters and unfreeze it (``llmdual.merge_lora`` folds them in first)."""
        ...

    def quantize(self, model: Any, scheme: str) -> None:
        """Quantize the model's projections in place to ``scheme`` (int8: per-channel weights, per-token dynamic
        activations; ``llmdual.quantize`` checks the scheme and the model first)."""
        ...

    def weight_bytes(self, model: Any) -> int:
        """Bytes the model's weights take in memory (int8 data and scales once quantized)."""
        ...

    def onnx_graph(self, model: Any, sig: Any, example: dict[str, np.ndarray], opset: int, dynamic: bool) -> Any:
        """The ``onnx.ModelProto`` of the model with the signature's inputs and outputs (needs the onnx extra)."""
        ...

    def onnx_opsets(self) -> range:
        """The opsets this backend's ONNX exporter can emit."""
        ...

    def run_signature(self, model: Any, sig: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The native model's outputs for an export signature's feeds: the verification reference."""
        ...

    def native_formats(self) -> tuple[str, ...]:
        """The formats this backend exports to natively, besides ONNX (``llmdual.export`` names)."""
        ...

    def export_native(self, model: Any, sig: Any, example: dict[str, np.ndarray], path: str, format: str,
                      metadata: dict[str, str]) -> None:
        """Write ``model`` at ``path`` in a native ``format`` with the signature's inputs, outputs and dynamic axes,
        traced on ``example``, carrying ``metadata``."""
        ...

    def load_native(self, path: str, format: str) -> tuple[Callable[[dict[str, np.ndarray]], list[np.ndarray]],
                                                          dict[str, str]]:
        """A native export's runner (feeds by input name in, outputs in signature order out) and its metadata."""
        ...


# backend name -> (package implementing Backend, top-level packages it needs, extra that installs them)
BACKENDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "torch": ("llmdual.torch_backend", ("torch",), "torch"),
    "keras": ("llmdual.keras_backend", ("keras",), "keras"),
}
# Keras' own backends and the extra that installs each
KERAS_BACKEND_EXTRAS = {"tensorflow": "keras", "jax": "jax", "torch": "torch"}


def check_backend(name: str) -> str:
    """Return ``name`` if it is a known backend, else raise naming the choices."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    return name


def missing_frameworks(name: str) -> list[str]:
    """Top-level packages a backend needs that are not installed (Keras also needs the library it runs on)."""
    _, needs, _ = BACKENDS[check_backend(name)]
    if name == "keras":
        needs = needs + (os.environ.get("KERAS_BACKEND", "tensorflow"),)
    return [pkg for pkg in needs if importlib.util.find_spec(pkg) is None]


def backend(name: str) -> Backend:
    """The backend package for ``name``; ``ImportError`` naming the extra to install if its framework is absent."""
    package, _, extra = BACKENDS[check_backend(name)]
    missing = missing_frameworks(name)
    if missing:
        if name == "keras":
            extra = KERAS_BACKEND_EXTRAS.get(os.environ.get("KERAS_BACKEND", "tensorflow"), extra)
            extra = "keras" if "keras" in missing else f"keras,{extra}"
        raise ImportError(
            f"backend {name!r} needs {', '.join(missing)}, which is not installed; "
            f"install it with: pip install 'llmdual[{extra}]'"
        )
    quiet_tensorflow()
    return importlib.import_module(package)  # type: ignore[return-value]


def backend_name(model: Any) -> str:
    """The name of the backend an llmdual model belongs to; ``TypeError`` for anything else."""
    module = type(model).__module__
    for name in BACKENDS:
        if module.startswith(f"llmdual.{name}_backend."):
            return name
    raise TypeError(f"expected an llmdual model (built by llmdual.build), got {type(model).__module__}."
                    f"{type(model).__name__}")


def backend_of(model: Any) -> Backend:
    """The backend package that implements ``model``."""
    return backend(backend_name(model))


def quiet_tensorflow() -> None:
    """Default TensorFlow's C++ log level to warnings and above before it is first imported (a user's own
    ``TF_CPP_MIN_LOG_LEVEL`` wins); the Keras backend also silences the start-up lines that ignore it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
