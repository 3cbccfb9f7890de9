"""Backend registry: resolve a backend name to its module, and a model to its backend, without importing frameworks early."""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType
from typing import Any

# backend name -> (module, distributions it needs, extra that installs them)
BACKENDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "torch": ("llmdual.torch_backend.api", ("torch",), "torch"),
    "keras": ("llmdual.keras_backend.api", ("keras",), "keras"),
}


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


def load_backend(name: str) -> ModuleType:
    """Import a backend's API module; ``ImportError`` naming the extra to install if its framework is absent."""
    module, _, extra = BACKENDS[check_backend(name)]
    missing = missing_frameworks(name)
    if missing:
        raise ImportError(
            f"backend {name!r} needs {', '.join(missing)}, which is not installed; "
            f"install it with: pip install 'llmdual[{extra}]'"
        )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return importlib.import_module(module)


def backend_of(model: Any) -> str:
    """The backend an llmdual model belongs to; ``TypeError`` for anything else."""
    module = type(model).__module__
    for name in BACKENDS:
        if module.startswith(f"llmdual.{name}_backend."):
            return name
    raise TypeError(f"expected an llmdual model (built by llmdual.build), got {type(model).__module__}.{type(model).__name__}")
