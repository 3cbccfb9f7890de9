"""The onnxruntime engines: llmdual's ONNX export of the PyTorch model (``ort-torch-export``) or of the Keras
model (``ort-keras-export``), run by onnxruntime with the case's thread count.

Each case exports what it runs with ``llmdual.onnx_export.export_onnx`` (which verifies the file against the
native model before keeping it): the plain LM graph for ``infer``, the KV-cache decoder graph for
``generate`` (driven by ``llmdual.onnx_runtime.OnnxDecoder``), the classifier graph for ``classify``. The
export (native build included) is ``export_s``, loading the file into a session ``build_s``.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

import llmdual
from llmdual.bench.workloads import PROBE_SIZE, probe
from llmdual.config import Config
from llmdual.generate import decoder_for
from llmdual.onnx_export import export_onnx
from llmdual.onnx_runtime import open_session
from llmdual.training import Batch, TrainConfig


class OnnxEngine:
    """onnxruntime over the export of ``source``'s (``torch`` or ``keras``) model, CPU or CUDA provider."""

    def __init__(self, settings: Mapping[str, Any], source: str):
        self.source, self.threads = source, settings.get("threads")
        self.cuda = settings.get("device") == "cuda"
        if self.cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("no CUDA execution provider in this onnxruntime (install onnxruntime-gpu)")
        self.folder = tempfile.TemporaryDirectory(prefix="llmdual-ort-")
        self.session: ort.InferenceSession | None = None

    def _session(self, path: str | Path) -> ort.InferenceSession:
        if not self.cuda:
            return open_session(path, self.threads)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CUDAExecutionProvider"])

    def prepare(self, settings: Mapping[str, Any], task: str, kv_cache: bool) -> dict[str, float]:
        if settings["dtype"] != "float32":
            raise ValueError(f"the onnxruntime engines run the float32 export, not {settings['dtype']}")
        path = Path(self.folder.name, f"{task}{'-kv' if kv_cache else ''}.onnx")
        started = time.perf_counter()
        native = llmdual.build(Config.from_dict(settings["config"]), self.source, task, settings["seed"])
        export_onnx(native, path, kv_cache=kv_cache)
        del native
        gc.collect()
        loaded = time.perf_counter()
        self.session = self._session(path)
        return {"export_s": loaded - started, "build_s": time.perf_counter() - loaded,
                "file_mb": path.stat().st_size / 2**20}

    def forward(self, ids: np.ndarray, mask: np.ndarray | None) -> Callable[[], Any]:
        session = self.session
        feeds = {"input_ids": np.asarray(ids, np.int64)}
        if mask is not None:
            feeds["attention_mask"] = np.asarray(mask, np.int64)
        return lambda: session.run(["logits"], feeds)[0]  # host numpy: the run has finished

    def to_numpy(self, output: np.ndarray) -> np.ndarray:
        return np.asarray(output, np.float32)

    def trainer(self, cfg: TrainConfig) -> Callable[[Batch], tuple[float, float]]:
        raise ValueError("onnxruntime runs exported inference graphs; it has no training step here")

    def decoder(self) -> Any:
        return decoder_for(self.session)

    def probe_flops(self) -> float:
        """A one-node ``MatMul`` graph run by onnxruntime with the same session settings."""
        n = PROBE_SIZE["cuda" if self.cuda else "cpu"]
        tensor = onnx.helper.make_tensor_value_info
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("MatMul", ["a", "a"], ["c"])], "probe",
            [tensor("a", onnx.TensorProto.FLOAT, [n, n])], [tensor("c", onnx.TensorProto.FLOAT, [n, n])])
        path = Path(self.folder.name, "probe.onnx")
        onnx.save_model(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), path)
        session = self._session(path)
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        return probe(lambda: session.run(None, {"a": a}), n)

    def reset_peaks(self) -> None:
        """Nothing to reset: onnxruntime exposes no allocator peak (device memory is not reported)."""

    def peak_device_mb(self) -> float | None:
        return None

    def release(self) -> None:
        self.session = None
        gc.collect()
