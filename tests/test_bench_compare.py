"""``benchmarks/compare.py`` end to end on the tiny preset: real engines, a crashing one, a missing framework; the
typed settings and their round trip through the worker's JSON."""

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmdual.bench import command, runner
from llmdual.bench.report import results
from llmdual.bench.settings import BenchSettings, Case
from llmdual.core.config import Config

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny(tmp_path, **changes):
    base = {"preset": "tiny", "engines": ("torch-eager", "keras-jax"), "workloads": ("infer", "generate"),
            "batch_sizes": (2,), "seq_lens": (8,), "new_tokens": 2, "warmup": 0, "repeats": 2, "threads": 1,
            "device": "cpu", "out": str(tmp_path / "out")}
    return BenchSettings(**{**base, **changes})


class Log(list):
    """A ``log`` callable that keeps the lines."""

    def __call__(self, line):
        self.append(line)


def test_a_real_tiny_run_writes_a_valid_document_report_and_charts(tmp_path):
    log = Log()
    doc, files = command.run(tiny(tmp_path), log)
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
    assert "infer" in printed and "keras-jax" in printed and "tok/s b1" in printed
    block = log[-1]  # the run ends with its verdict, its caveats and where the files are
    assert block.startswith("Verdict") and "\n  inference " in block and str(out / "report.md") in block


def test_a_crashing_engine_and_a_missing_framework_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a))

    def crash_tensorflow(case_json, result):
        if json.loads(case_json)["engine"].startswith("keras-tensorflow"):
            return [sys.executable, "-c", "import os, sys; sys.stderr.write('segfault, say\\n'); os._exit(139)"]
        return runner.worker_command(case_json, result)

    options = tiny(tmp_path, engines=("keras-tensorflow", "torch-eager", "keras-jax", "keras-tensorflow-xla"),
                   workloads=("infer", "generate"), repeats=1)
    doc, _ = command.run(options, Log(), command=crash_tensorflow)
    status = {(c["engine"], c["workload"]): (c["status"], c["reason"]) for c in doc["cases"]}
    assert status["torch-eager", "infer"] == ("ok", None) and status["torch-eager", "generate"] == ("ok", None)
    for workload in ("infer", "generate"):
        crashed, reason = status["keras-tensorflow", workload]
        assert crashed == "crashed" and "exit code 139" in reason and "segfault, say" in reason
        skipped, reason = status["keras-jax", workload]
        assert skipped == "skipped" and "llmdual[jax]" in reason
    assert status["keras-tensorflow-xla", "infer"][0] == status["keras-tensorflow-xla", "generate"][0] == "crashed"
    assert "crashed" in (tmp_path / "out" / "report.md").read_text()


def test_settings_validate_and_sweep_makes_a_grid():
    assert BenchSettings(batch_sizes=(1, 4), seq_lens=(32, 64), sweep=True).points() == [
        (1, 32), (1, 64), (4, 32), (4, 64)]
    assert BenchSettings(batch_sizes=(4,), seq_lens=(64,), sweep=True).points() == [
        (1, 32), (1, 64), (4, 32), (4, 64), (8, 32), (8, 64)]
    with pytest.raises(ValueError, match="need --sweep"):
        BenchSettings(batch_sizes=(1, 4))
    with pytest.raises(ValueError, match="unknown engine 'torch-fast'"):
        BenchSettings(engines=("torch-fast",))
    with pytest.raises(ValueError, match="sequence lengths"):
        BenchSettings(preset="tiny", seq_lens=(65,))


def test_the_command_line_defaults_are_the_settings_own():
    def settings(*argv):
        return command.settings_of(command.parser().parse_args(list(argv)))

    assert settings() == dataclasses.replace(BenchSettings(), prompt_len=64)  # the command line's prompt length
    quick = settings("--quick", "--batch", "3")
    assert (quick.batch_sizes, quick.seq_lens, quick.new_tokens, quick.prompt_len) == ((3,), (64,), 8, None)
    assert "torch-compile" not in quick.engines and "torch-compile" in BenchSettings().engines
    tiny = settings("--preset", "tiny")  # a preset shorter than the default sequence runs at its longest
    assert tiny.seq_lens == (Config.preset("tiny").max_seq_len,) and tiny.prompt_len == 64
    with pytest.raises(ValueError, match="sequence lengths in \\[1, 64\\]"):
        settings("--preset", "tiny", "--seq-len", "128")


def test_the_settings_round_trip_through_the_workers_json():
    """Every field set away from its default (so a field the JSON dropped or mistyped would show) comes back equal,
    as the same types; a case with a field the worker does not know is refused by name."""
    defaults = BenchSettings()
    settings = BenchSettings(
        preset="tiny", engines=("keras-jax", "torch-eager"), workloads=("kv", "train"), batch_sizes=(1, 3),
        seq_lens=(16, 32), prompt_len=12, new_tokens=5, sweep=True, precision="bf16", tf32=True, device="cuda",
        warmup=0, repeats=7, budget_s=2.5, rounds=3, threads=2, priority="memory", out="elsewhere", seed=11,
        timeout_s=30.0, nanogpt="/src/nanoGPT", charts=False, config_override=Config.preset("tiny", vocab_size=512))
    unchanged = [f.name for f in dataclasses.fields(BenchSettings)
                 if getattr(settings, f.name) == getattr(defaults, f.name)]
    assert unchanged == []
    case = Case("keras-jax", "kv", settings, 3, 32, expected="/tmp/want.npz")
    text = case.to_json()
    back = Case.from_json(text)
    assert back == case and isinstance(back.settings.engines, tuple) and isinstance(back.settings.config, Config)
    assert json.loads(text)["settings"]["batch_sizes"] == [1, 3]  # plain JSON, as the command line carries it
    assert BenchSettings.from_json(settings.to_json()) == settings
    with pytest.raises(ValueError, match="unknown BenchSettings fields \\['mode'\\]"):
        BenchSettings.from_dict({**settings.to_dict(), "mode": "ok"})
    with pytest.raises(ValueError, match="a case is a JSON object with the fields"):
        Case.from_json(json.dumps({**json.loads(text), "colour": "red"}))


def test_cuda_without_a_gpu_is_refused_clearly(monkeypatch, tmp_path):
    monkeypatch.setattr(command.env, "gpus", list)
    assert command.resolve_device("auto") == "cpu"
    with pytest.raises(command.NoDevice, match="no CUDA device"):
        command.resolve_device("cuda")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--engines", "torch-turbo",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "unknown engine 'torch-turbo'" in done.stderr


def test_the_parent_side_imports_no_framework():
    """The command, the engine table, the workloads and the worker's entry import frameworks only inside a worker."""
    code = ("import sys; from llmdual.bench import command, expected, inputs, settings, timing, workloads, worker; "
            "from llmdual.bench.engines import reference_models, runtime, table; "
            "from llmdual.bench.report import bars, charts, tables; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax', 'onnxruntime') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                          cwd=ROOT)
    assert done.stdout.strip() == "[]"
