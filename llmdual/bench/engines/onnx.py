"""onnxruntime over llmdual's verified ONNX export of the PyTorch (``ort-torch-export``) or Keras model
(``ort-keras-export``). Exports run in a child process (``python -m llmdual.bench.engines.onnx``), so the
engine's own process holds onnxruntime only, as a deployment would; ``export_s`` includes the verification.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

import llmdual
from llmdual.bench.engines.runtime import EngineSettings, Runtime
from llmdual.bench.timing import PROBE_SIZE, probe
from llmdual.contract import backends
from llmdual.core.config import Config
from llmdual.onnx.export import export_onnx
from llmdual.onnx.runtime import OnnxDecoder, open_session

Graph = tuple[EngineSettings, str, bool]  # a case's settings, task and whether it is the KV-cache decoder


def export_graphs(source: str, config: Config, seed: int, graphs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Export ``graphs`` (``task``, ``kv_cache``, ``path`` each) of the model of ``config`` and ``seed`` from
    ``source`` in one child process; per graph ``{"export_s": seconds}`` or ``{"error": why}``. ``RuntimeError`` if
    the child dies."""
    command = [sys.executable, "-m", "llmdual.bench.engines.onnx", "--source", source, "--config", config.to_json(),
               "--seed", str(seed), "--graphs", json.dumps(list(graphs))]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    sys.stderr.write(done.stderr)  # the worker's stderr tail then shows the exporters' own messages
    if done.returncode != 0:
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "")
        raise RuntimeError(f"the ONNX export process ({source}) died with exit code {done.returncode}: {last[:300]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class OrtRuntime(Runtime):
    """onnxruntime over the export of ``source``'s (``torch`` or ``keras``) model, CPU or CUDA provider."""

    def __init__(self, settings: EngineSettings, source: str):
        self.source, self.threads = source, settings.threads
        self.cuda = settings.device == "cuda"
        if self.cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("no CUDA execution provider in this onnxruntime (install onnxruntime-gpu)")
        self.folder = tempfile.TemporaryDirectory(prefix="llmdual-ort-")
        self.session: ort.InferenceSession | None = None
        self.exports: dict[str, dict[str, Any]] = {}  # graph key -> path and export_s, or error

    @staticmethod
    def _model(settings: EngineSettings) -> str:
        return json.dumps([settings.config.to_dict(), settings.seed], sort_keys=True)

    def _key(self, settings: EngineSettings, task: str, kv_cache: bool) -> str:
        """Graphs have dynamic batch and sequence axes: one per model (config, seed), task and cache use."""
        return json.dumps([self._model(settings), task, kv_cache])

    def prefetch(self, graphs: Sequence[Graph]) -> None:
        """Export every graph the process's cases need, one child process per model."""
        by_model: dict[str, tuple[EngineSettings, dict[str, dict[str, Any]]]] = {}
        for settings, task, kv_cache in graphs:
            key = self._key(settings, task, kv_cache)
            if key in self.exports or settings.dtype != "float32":
                continue
            path = Path(self.folder.name, f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx")
            by_model.setdefault(self._model(settings), (settings, {}))[1][key] = {
                "task": task, "kv_cache": kv_cache, "path": str(path)}
        for settings, wanted in by_model.values():
            results = export_graphs(self.source, settings.config, settings.seed, list(wanted.values()))
            for (key, graph), result in zip(wanted.items(), results):
                self.exports[key] = {**graph, **result}

    def _session(self, path: str | Path) -> ort.InferenceSession:
        if not self.cuda:
            return open_session(path, self.threads)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CUDAExecutionProvider"])

    def prepare(self, settings: EngineSettings, task: str, kv_cache: bool) -> dict[str, float]:
        if settings.dtype != "float32":
            raise ValueError(f"the onnxruntime engines run the float32 export, not {settings.dtype}")
        key = self._key(settings, task, kv_cache)
        if key not in self.exports:
            self.prefetch([(settings, task, kv_cache)])
        graph = self.exports[key]
        if "error" in graph:
            raise RuntimeError(f"ONNX export from {self.source} failed: {graph['error']}")
        started = time.perf_counter()
        self.session = self._session(graph["path"])
        return {"export_s": graph["export_s"], "build_s": time.perf_counter() - started,
                "file_mb": Path(graph["path"]).stat().st_size / 2**20}

    def forward(self, ids: np.ndarray, mask: np.ndarray | None) -> Callable[[], Any]:
        session = self.session
        feeds = {"input_ids": np.asarray(ids, np.int64)}
        if mask is not None:
            feeds["attention_mask"] = np.asarray(mask, np.int64)
        return lambda: session.run(["logits"], feeds)[0]  # host numpy: the run has finished

    def decoder(self, use_cache: bool = True) -> Any:
        return OnnxDecoder(self.session)

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

    def release(self) -> None:
        self.session = None
        gc.collect()


def main(argv: Sequence[str] | None = None) -> int:
    """The export child: build the model in ``--source``'s framework and export each graph; print the results."""
    parser = argparse.ArgumentParser(description="export a benchmark model's ONNX graphs")
    parser.add_argument("--source", choices=backends("onnx"), required=True)
    parser.add_argument("--config", required=True, help="the model's llmdual.Config as JSON")
    parser.add_argument("--seed", type=int, required=True, help="the seed of its canonical weights")
    parser.add_argument("--graphs", required=True, help='JSON list of {"task", "kv_cache", "path"}')
    args = parser.parse_args(argv)
    config = Config.from_json(args.config)
    results = []
    for graph in json.loads(args.graphs):
        started = time.perf_counter()
        try:
            model = llmdual.build(config, args.source, graph["task"], args.seed)
            export_onnx(model, graph["path"], kv_cache=graph["kv_cache"])
            results.append({"export_s": time.perf_counter() - started})
        except Exception as error:  # noqa: BLE001 -- one graph's failure is its cases'; the others still export
            traceback.print_exc()
            results.append({"error": f"{type(error).__name__}: {str(error)[:300]}"})
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
