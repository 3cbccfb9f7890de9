"""LoRA in Keras: Keras' own ``Dense.enable_lora`` on each target projection. Mirrors
``llmdual/backends/torch/lora.py``.

``enable_lora`` adds ``lora_kernel_a`` ``[in, r]`` and ``lora_kernel_b`` ``[r, out]`` (the canonical layout) and
computes ``x @ (W + alpha / r * A @ B) + b``. The adapter values are set by ``llmdual.lora`` through
``set_weights``; this module only adds and removes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras

if TYPE_CHECKING:
    from llmdual.core.lora_spec import LoraSpec


def projections(model: keras.Model, spec: LoraSpec) -> list[keras.layers.Dense]:
    """Every target projection, block by block in target order."""
    found = []
    for block in model.h:
        for target in spec.targets:
            parent, leaf = target.split(".")
            found.append(getattr(getattr(block, parent), leaf))
    return found


def add_lora(model: keras.Model, spec: LoraSpec) -> None:
    """Give the target projections zero adapters of ``spec`` and freeze every other variable."""
    for dense in projections(model, spec):
        dense.enable_lora(spec.rank, lora_alpha=spec.alpha, a_initializer="zeros", b_initializer="zeros")
    adapters = {id(v) for dense in projections(model, spec) for v in (dense.lora_kernel_a, dense.lora_kernel_b)}
    for variable in model.weights:
        variable.trainable = id(variable) in adapters
    model.lora = spec
    _forget_traces(model)


def remove_lora(model: keras.Model) -> None:
    """Drop the adapters (Keras has no ``disable_lora``: its variables are untracked and LoRA switched off);
    unfreeze the model."""
    for dense in projections(model, model.lora):
        del dense.lora_kernel_a, dense.lora_kernel_b
        dense.lora_enabled, dense.lora_rank, dense.lora_alpha = False, None, None
    for variable in model.weights:
        variable.trainable = True
    model.lora = None
    _forget_traces(model)


def _forget_traces(model: keras.Model) -> None:
    """Drop the compiled decoding step and greedy loop kept on the model (``decode.compiled``, ``decode._looped``):
    traced before its projections changed, a graph would go on computing the old ones."""
    for name in [n for n in vars(model) if n.startswith("_decode_")]:
        object.__delattr__(model, name)
