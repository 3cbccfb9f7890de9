"""PyTorch's own deployment formats: a ``torch.export`` ExportedProgram (``.pt2``) and the same program compiled
ahead of time by AOTInductor (a ``.pt2`` package). Mirrors ``llmdual/backends/keras/native.py``;
``llmdual.native.export`` checks the format, verifies the file in a fresh process and puts it in place."""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from llmdual.backends.torch.export import Graph

if TYPE_CHECKING:
    from llmdual.core.signature import Signature

META_FILE = "llmdual.json"  # the export's metadata: an extra file of the program, AOTInductor's own metadata


def save(model: nn.Module, sig: Signature, example: dict[str, np.ndarray], path: str, format: str,
         metadata: dict[str, str]) -> None:
    """Write ``model`` at ``path`` as ``format`` with ``sig``'s inputs, outputs and dynamic axes, traced on
    ``example``; AOTInductor compiles for CUDA when a GPU is present, else for this CPU."""
    device = "cuda" if format == "aoti" and torch.cuda.is_available() else "cpu"
    package = f"{path}.pt2"  # torch's writers expect the suffix; the caller's temporary name has another
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.export internals' notices, not about this model
            program = _program(model, sig, example, device)
            if format == "torch-export":
                torch.export.save(program, package, extra_files={META_FILE: json.dumps(metadata)})
            else:
                torch._inductor.aoti_compile_and_package(program, package_path=package, inductor_configs={
                    "aot_inductor.metadata": {**metadata, "llmdual.device": device}})
        os.replace(package, path)
    finally:
        if os.path.exists(package):
            os.remove(package)


def load(path: str, format: str) -> tuple[Callable[[dict[str, np.ndarray]], list[np.ndarray]], dict[str, str]]:
    """A runner over the export at ``path`` (feeds by input name in, outputs in signature order out) and the
    metadata it was saved with."""
    if format == "torch-export":
        extra = {META_FILE: ""}
        program = torch.export.load(path, extra_files=extra)
        fn, metadata = program.module(), json.loads(extra[META_FILE])
    else:
        fn = torch._inductor.aoti_load_package(path)
        metadata = {k: v for k, v in fn.get_metadata().items() if k.startswith("llmdual.")}
    names, device = metadata["llmdual.inputs"].split(","), metadata.get("llmdual.device", "cpu")

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = fn(*(torch.from_numpy(np.ascontiguousarray(feeds[n])).to(device) for n in names))
        return [t.detach().cpu().numpy() for t in out]

    return run, metadata


def _dims(max_seq_len: int) -> dict[str, object]:
    """A ``torch.export.Dim`` per axis name; the total length (past + new) is left for the exporter to relate."""
    Dim = torch.export.Dim
    return {
        "batch": Dim("batch", min=1),
        "sequence": Dim("sequence", min=1, max=max_seq_len),
        "past_sequence": Dim("past_sequence", min=0, max=max_seq_len),
        "total_sequence": Dim.DYNAMIC,
    }


def _program(model: nn.Module, sig: Signature, example: dict[str, np.ndarray],
             device: str) -> torch.export.ExportedProgram:
    """The ExportedProgram of ``model`` on ``device`` with ``sig``'s dynamic axes, in inference mode."""
    dims = _dims(model.config.max_seq_len)
    shapes = tuple({i: dims[a] for i, a in enumerate(axes) if isinstance(a, str)} for axes in sig.inputs.values())
    # Contiguous examples: torch.export guards on the strides it saw, and the runner feeds contiguous arrays.
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n])).to(device) for n in sig.inputs)
    module = copy.deepcopy(model).to(device).eval() if device != "cpu" else model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.export.export(Graph(module, sig.kv_cache), args, dynamic_shapes=(shapes,))
    finally:
        model.train(was_training)
