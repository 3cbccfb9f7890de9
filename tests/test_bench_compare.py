"""``benchmarks/compare.py`` end to end on the tiny preset: real engines, a crashing one, a missing framework."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmdual.bench import compare, results, runner

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny(tmp_path, **changes):
    base = {"preset": "tiny", "engines": ("torch-eager", "keras-jax"), "workloads": ("infer", "generate"),
            "batch_sizes": (2,), "seq_lens": (8,), "new_tokens": 2, "warmup": 0, "repeats": 2, "threads": 1,
            "device": "cpu", "out": str(tmp_path / "out")}
    return compare.Options(**{**base, **changes})


class Log(list):
    """A ``log`` callable that keeps the lines."""

    def __call__(self, line):
        self.append(line)


def test_a_real_tiny_run_writes_a_valid_document_report_and_charts(tmp_path):
    log = Log()
    doc, files = compare.run(tiny(tmp_path), log)
    out = tmp_path / "out"
    assert results.read_json(out / "results.json") == json.loads(json.dumps(doc))
    assert doc["schema"] == "llmdual.bench/2"
    by_case = {(c["engine"], c["workload"]): c for c in doc["cases"]}
    assert set(by_case) == {(e, w) for e in ("torch-eager", "keras-jax") for w in ("infer", "generate")}
    for (engine, workload), case in by_case.items():
        assert case["status"] == "ok", (engine, workload, case["reason"])
        assert set(results.WORKLOAD_METRICS[workload]) <= set(case["stats"]), (engine, workload)
        assert case["scalars"]["max_abs_diff"] <= 1e-4 and case["scalars"]["probe_flops"] > 0
        assert case["settings"]["threads"] == 1 and case["settings"]["tolerance"] == 1e-4
    peaks = {case["flops"]["peak"] for case in doc["cases"] if case["flops"]}  # one session peak for every engine
    assert len(peaks) == 1 and doc["settings"]["probe_flops"] in peaks
    assert by_case["torch-eager", "infer"]["flops"]["peak_source"].startswith("best matmul probe of the run")
    assert doc["settings"]["device"] == "cpu" and doc["env"]["threads"] == 1
    assert len(results.read_jsonl(out / "runs.jsonl")) == 4
    report = (out / "report.md").read_text()
    assert "## Verdict (priority: training)" in report and "### generate" in report
    charts = [f for f in files if f.suffix == ".png"]
    assert {f.name for f in charts} == {"throughput_infer.png", "throughput_generate.png", "memory.png", "warmup.png",
                                        "latency_generate.png"}
    assert all(f.read_bytes().startswith(PNG_SIGNATURE) for f in charts)
    printed = "\n".join(log)
    assert "infer" in printed and "keras-jax" in printed and "per-token latency" in printed


def test_a_crashing_engine_and_a_missing_framework_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a))

    def crash_tensorflow(case_json, result):
        if json.loads(case_json)["engine"].startswith("keras-tensorflow"):
            return [sys.executable, "-c", "import os, sys; sys.stderr.write('segfault, say\\n'); os._exit(139)"]
        return runner.worker_command(case_json, result)

    options = tiny(tmp_path, engines=("keras-tensorflow", "torch-eager", "keras-jax", "keras-tensorflow-xla"),
                   workloads=("infer", "generate"), repeats=1)
    doc, _ = compare.run(options, Log(), command=crash_tensorflow)
    status = {(c["engine"], c["workload"]): (c["status"], c["reason"]) for c in doc["cases"]}
    assert status["torch-eager", "infer"] == ("ok", None) and status["torch-eager", "generate"] == ("ok", None)
    for workload in ("infer", "generate"):
        crashed, reason = status["keras-tensorflow", workload]
        assert crashed == "crashed" and "exit code 139" in reason and "segfault, say" in reason
        skipped, reason = status["keras-jax", workload]
        assert skipped == "skipped" and "llmdual[jax]" in reason
    assert status["keras-tensorflow-xla", "infer"][0] == status["keras-tensorflow-xla", "generate"][0] == "crashed"
    assert "crashed" in (tmp_path / "out" / "report.md").read_text()


def test_options_validate_and_sweep_makes_a_grid():
    assert compare.Options(batch_sizes=(1, 4), seq_lens=(32, 64), sweep=True).points() == [
        (1, 32), (1, 64), (4, 32), (4, 64)]
    assert compare.Options(batch_sizes=(4,), seq_lens=(64,), sweep=True).points() == [
        (1, 32), (1, 64), (4, 32), (4, 64), (8, 32), (8, 64)]
    with pytest.raises(ValueError, match="need --sweep"):
        compare.Options(batch_sizes=(1, 4))
    with pytest.raises(ValueError, match="unknown engine 'torch-fast'"):
        compare.Options(engines=("torch-fast",))
    with pytest.raises(ValueError, match="sequence lengths"):
        compare.Options(preset="tiny", seq_lens=(65,))


def test_cuda_without_a_gpu_is_refused_clearly(monkeypatch, tmp_path):
    monkeypatch.setattr(compare.env, "gpus", list)
    assert compare.resolve_device("auto") == "cpu"
    with pytest.raises(compare.NoDevice, match="no CUDA device"):
        compare.resolve_device("cuda")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--engines", "torch-turbo",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "unknown engine 'torch-turbo'" in done.stderr


def test_the_parent_side_imports_no_framework():
    """compare, the engine table, the workloads and the worker's entry import frameworks only inside a worker."""
    code = ("import sys; from llmdual.bench import bars, charts, compare, engines, expected, inputs, reference, "
            "timing, workloads, worker; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax', 'onnxruntime') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                          cwd=ROOT)
    assert done.stdout.strip() == "[]"
