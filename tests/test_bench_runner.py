"""The benchmark runner against a fake worker script (every way a worker can end), plus environment capture."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llmdual.bench import env, runner
from llmdual.bench.report.results import Record, build_document, read_jsonl
from llmdual.bench.settings import BenchSettings, Case

# A fake worker's behaviour: the engine's name after "fake-" (or "mode" in ``--params``), with its ``--params``.
FAKE_WORKER = textwrap.dedent('''
    import argparse, json, os, signal, subprocess, sys, time
    parser = argparse.ArgumentParser()
    parser.add_argument("--case-json", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--params", default="{}")
    args = parser.parse_args()
    case = json.loads(args.case_json)
    params = json.loads(args.params)
    mode = params.get("mode") or case["engine"].split("-", 1)[1]

    def peak_rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    def write(result):
        with open(args.result, "w") as handle:
            json.dump({"engine": case["engine"], "workload": case["workload"], **result}, handle)

    if mode == "ok":
        ballast = bytearray(int(params.get("ballast_mb", 0) * 2**20))
        for i in range(0, len(ballast), 4096):
            ballast[i] = 1  # touch every page so it counts as resident
        time.sleep(params.get("hold_s", 0))
        seen = 0
        if "jsonl" in params and os.path.exists(params["jsonl"]):
            with open(params["jsonl"]) as handle:
                seen = sum(1 for line in handle if line.strip())
        write({"status": "ok", "reason": None,
               "measurements": {"tokens_per_s": params.get("values", [100.0, 101.0, 99.0])},
               "scalars": {"peak_rss_mb": peak_rss_mb(),
                           "warmup_s": 0.5, "lines_seen": seen}})
    elif mode == "env":
        write({"status": "ok", "reason": None, "measurements": {},
               "scalars": {"keras_backend": os.environ.get("KERAS_BACKEND"),
                           "omp": os.environ.get("OMP_NUM_THREADS"),
                           "cores": len(os.sched_getaffinity(0))}})
    elif mode == "mismatch":
        write({"status": "mismatch", "reason": "max_abs_diff 0.5 > 1e-4",
               "measurements": {"tokens_per_s": [50.0]}, "scalars": {"max_abs_diff": 0.5}})
    elif mode == "failed":
        write({"status": "failed", "reason": "dtype bfloat16 unsupported here", "measurements": {}, "scalars": {}})
    elif mode == "no-reason":
        write({"status": "failed", "reason": None, "measurements": {}, "scalars": {}})
    elif mode == "garbage":
        with open(args.result, "w") as handle:
            handle.write("{not json")
    elif mode == "raise":
        raise RuntimeError("kaboom in the worker")
    elif mode == "exit":
        sys.stderr.write("about to leave\\n")
        sys.stderr.flush()
        os._exit(3)
    elif mode == "oom":
        sys.stderr.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\\n")
        sys.exit(1)
    elif mode == "signal":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(params["pidfile"], "w") as handle:
            handle.write(str(child.pid))
        time.sleep(60)
    # mode "silent": exit 0 without a result
''')


SETTINGS = BenchSettings(preset="tiny", batch_sizes=(2,), seq_lens=(8,), device="cpu")


def spec(engine, workload="infer", **changes):
    """A case of ``engine`` at the tiny point, its settings changed by ``changes``."""
    return Case(engine, workload, dataclasses.replace(SETTINGS, **changes), 2, 8)


class FakeWorker:
    """A command builder running the fake worker instead of ``python -m llmdual.bench.worker``, handing each engine
    its ``params``."""

    def __init__(self, script, params=None):
        self.script, self.params = script, params or {}

    def __call__(self, case_json, result):
        params = self.params.get(json.loads(case_json)["engine"], {})
        return [sys.executable, str(self.script), "--case-json", case_json, "--result", result,
                "--params", json.dumps(params)]

    def given(self, params):
        return FakeWorker(self.script, params)


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    return FakeWorker(script)


class Log(list):
    """A ``log`` callable that keeps the lines."""

    def __call__(self, line):
        self.append(line)


def _state(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except FileNotFoundError:
        return None
    return None


def test_every_outcome_is_recorded_and_the_run_goes_on(tmp_path, fake):
    modes = ["ok", "raise", "exit", "oom", "signal", "garbage", "silent", "no-reason", "mismatch", "failed"]
    specs = [spec(f"fake-{m}") for m in modes]
    jsonl = tmp_path / "runs.jsonl"
    log = Log()
    records = runner.run_cases(specs, jsonl, timeout_s=30, command=fake, log=log)
    assert all(isinstance(r, Record) for r in records)
    by_mode = {r.engine.split("-", 1)[1]: r.to_dict() for r in records}
    assert set(by_mode) == set(modes)
    expected = {"ok": "ok", "raise": "crashed", "exit": "crashed", "oom": "crashed", "signal": "crashed",
                "garbage": "crashed", "silent": "crashed", "no-reason": "crashed", "mismatch": "mismatch",
                "failed": "failed"}
    assert {m: r["status"] for m, r in by_mode.items()} == expected
    assert "kaboom in the worker" in by_mode["raise"]["stderr_tail"]
    assert "RuntimeError" in by_mode["raise"]["reason"]
    assert by_mode["exit"]["returncode"] == 3 and "about to leave" in by_mode["exit"]["stderr_tail"]
    assert by_mode["oom"]["reason"].startswith("out of memory")
    assert "SIGKILL" in by_mode["signal"]["reason"]
    assert "not JSON" in by_mode["garbage"]["reason"]
    assert "without writing" in by_mode["silent"]["reason"]
    assert "must give a reason" in by_mode["no-reason"]["reason"]
    assert by_mode["mismatch"]["reason"] == "max_abs_diff 0.5 > 1e-4"
    assert by_mode["ok"]["measurements"] == {"tokens_per_s": [100.0, 101.0, 99.0]}
    assert by_mode["ok"]["reason"] is None
    # the JSONL file holds exactly what was returned, every finished case
    assert read_jsonl(jsonl) == json.loads(json.dumps([r.to_dict() for r in records]))
    assert all(any(f"fake-{m} infer" in line for line in log) for m in modes) and len(log) == len(modes)
    # and the records make a valid document whose cases keep their statuses
    doc = build_document({}, {"seed": 0}, records)
    assert {c["engine"]: c["status"] for c in doc["cases"]} == {f"fake-{m}": s for m, s in expected.items()}


def test_timeout_kills_the_worker_and_everything_it_started(tmp_path, fake):
    pidfile = tmp_path / "grandchild.pid"
    started = time.monotonic()
    records = runner.run_cases([spec("fake-hang", "train"), spec("fake-ok", "train")], tmp_path / "r.jsonl",
                               timeout_s=1.5, command=fake.given({"fake-hang": {"pidfile": str(pidfile)}}),
                               log=Log())
    assert time.monotonic() - started < 15
    hung = next(r for r in records if r.engine == "fake-hang")
    assert hung.status == "timeout" and "1.5 s" in hung.reason
    assert next(r for r in records if r.engine == "fake-ok").status == "ok"
    grandchild = int(pidfile.read_text())
    for _ in range(50):  # killed with its process group; at most a zombie until something reaps it
        if _state(grandchild) in (None, "Z"):
            break
        time.sleep(0.05)
    assert _state(grandchild) in (None, "Z")


def test_results_are_appended_as_each_case_finishes(tmp_path, fake):
    jsonl = tmp_path / "runs.jsonl"
    specs = [spec(f"fake-{i}") for i in range(4)]
    params = {f"fake-{i}": {"mode": "ok", "jsonl": str(jsonl)} for i in range(4)}
    records = runner.run_cases(specs, jsonl, rounds=2, seed=3, command=fake.given(params), log=Log())
    # each worker saw the lines of every case that finished before it started
    assert [r.scalars["lines_seen"] for r in records] == list(range(8))


def test_an_interrupt_keeps_every_finished_case(tmp_path, fake):
    calls = []

    def interrupting(case_json, result):
        calls.append(case_json)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return fake.given({f"fake-{i}": {"mode": "ok"} for i in range(5)})(case_json, result)

    jsonl = tmp_path / "runs.jsonl"
    specs = [spec(f"fake-{i}") for i in range(5)]
    with pytest.raises(KeyboardInterrupt):
        runner.run_cases(specs, jsonl, command=interrupting, log=Log())
    kept = read_jsonl(jsonl)
    assert len(kept) == 2 and all(r["status"] == "ok" for r in kept)


def test_peak_rss_is_the_workers_own_not_the_parents(fake):
    ballast = bytearray(200 * 2**20)  # a parent bigger than the workers must not leak into their figures
    ballast[:: 4096] = b"\x01" * len(ballast[:: 4096])
    [heavy] = runner.run_group([spec("fake-ok")], command=fake.given({"fake-ok": {"ballast_mb": 80, "hold_s": 0.5}}))
    [light] = runner.run_group([spec("fake-ok")], command=fake)
    assert heavy.status == light.status == "ok"
    assert heavy.scalars["peak_rss_mb"] >= 80 and heavy.child_peak_rss_mb >= 80
    assert light.child_peak_rss_mb < 80 and light.scalars["peak_rss_mb"] < 80
    assert len(ballast) < heavy.child_peak_rss_mb * 2**20 * 3  # keeps the parent's ballast alive until here


def test_missing_framework_is_skipped_naming_the_extra(tmp_path, fake, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("jax", "onnx", "tf2onnx", "keras_hub")
                        else real(name, *a))
    ran = []

    def command(case_json, result):
        ran.append(json.loads(case_json)["engine"])
        return fake(case_json, result)

    specs = [spec("keras-jax", "train"), spec("ort-keras-export"), spec("kerashub-jax"), spec("fake-ok", "train")]
    records = runner.run_cases(specs, tmp_path / "r.jsonl", rounds=2, command=command, log=Log())
    by_engine = {}
    for record in records:
        by_engine.setdefault(record.engine, []).append(record)
    assert ran == ["fake-ok", "fake-ok"]
    [jax] = by_engine["keras-jax"]  # recorded once, not once per round
    assert jax.status == "skipped"
    assert "jax" in jax.reason and "llmdual[jax]" in jax.reason
    [ort] = by_engine["ort-keras-export"]
    assert ort.status == "skipped" and "onnx" in ort.reason and "llmdual[onnx]" in ort.reason
    [hub] = by_engine["kerashub-jax"]  # a reference implementation: a row of the same table, same treatment
    assert hub.status == "skipped" and "install llmdual[jax,reference]" in hub.reason


def test_worker_env_sets_backend_threads_and_devices():
    base = {"PATH": "/bin", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    jax_cpu = runner.worker_env("keras-jax", 1, "cpu", base)
    assert jax_cpu["KERAS_BACKEND"] == "jax"
    assert jax_cpu["OMP_NUM_THREADS"] == jax_cpu["MKL_NUM_THREADS"] == jax_cpu["TF_NUM_INTRAOP_THREADS"] == "1"
    assert jax_cpu["XLA_FLAGS"].startswith("--xla_dump_to=/tmp/x") and "intra_op_parallelism_threads=1" in jax_cpu["XLA_FLAGS"]
    assert jax_cpu["CUDA_VISIBLE_DEVICES"] == "" and jax_cpu["TF_CPP_MIN_LOG_LEVEL"] == "2"
    torch_gpu = runner.worker_env("keras-torch", 4, "cuda", base)
    assert torch_gpu["KERAS_BACKEND"] == "torch" and torch_gpu["OMP_NUM_THREADS"] == "4"
    assert "CUDA_VISIBLE_DEVICES" not in torch_gpu and torch_gpu["XLA_FLAGS"] == base["XLA_FLAGS"]
    assert runner.worker_env("keras-tensorflow-xla", None, "cpu", base)["KERAS_BACKEND"] == "tensorflow"
    assert "KERAS_BACKEND" not in runner.worker_env("torch-eager", None, "cpu", base)


def test_worker_gets_its_environment_and_is_pinned_to_its_threads(fake):
    [record] = runner.run_group([spec("keras-jax", "train", threads=1)],
                                command=fake.given({"keras-jax": {"mode": "env"}}))
    assert record.status == "ok"
    assert record.scalars == {"keras_backend": "jax", "omp": "1", "cores": 1}
    assert len(os.sched_getaffinity(0)) >= 1  # the parent keeps all its cores


def test_unknown_workload_is_refused_when_the_case_is_made():
    with pytest.raises(ValueError, match="unknown workload 'dance'; choose one of train, infer"):
        spec("fake", "dance")


def test_environment_capture_reads_metadata_and_imports_no_framework():
    code = ("import sys, json; from llmdual.bench import env, flops, runner; "
            "from llmdual.bench.report import bars, results, stats, tables; "
            "doc = env.capture(threads=2, flags={'out': __import__('pathlib').Path('x')}); "
            "print(json.dumps([doc, sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules)]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    captured, imported = json.loads(done.stdout)
    assert imported == []
    assert captured["threads"] == 2 and captured["flags"] == {"out": "x"}
    assert captured["python"] == sys.version.split()[0]
    import numpy
    assert captured["packages"]["numpy"] == numpy.__version__


def test_package_versions_of_absent_packages_are_none():
    assert env.package_versions(("surely_not_installed_pkg_xyz",)) == {"surely_not_installed_pkg_xyz": None}


def test_cpu_model_and_memory_come_from_proc_files(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: Acme\nmodel name\t: Acme Turbo 9000 @ 3.0GHz\n")
    assert env.cpu_model(cpuinfo) == "Acme Turbo 9000 @ 3.0GHz"
    assert env.cpu_model(tmp_path / "missing")  # falls back to platform, never empty
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16777216 kB\nMemFree:  1 kB\n")
    assert env.memory_gb(meminfo) == 16.0
    assert env.memory_gb(tmp_path / "missing") is None


def test_gpus_come_from_nvidia_smi_when_present(tmp_path, monkeypatch):
    tool = tmp_path / "nvidia-smi"
    tool.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 550.54.15'\necho 'NVIDIA A100-PCIE-40GB, 550.54.15'\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert env.gpus() == [{"name": "NVIDIA H100 80GB HBM3", "driver": "550.54.15"},
                          {"name": "NVIDIA A100-PCIE-40GB", "driver": "550.54.15"}]
    tool.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert env.gpus() == []
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert env.gpus() == []


GROUP_WORKER = textwrap.dedent('''
    import argparse, json, os, sys, time
    parser = argparse.ArgumentParser()
    parser.add_argument("--case-json", action="append", required=True)
    parser.add_argument("--result", action="append", required=True)
    parser.add_argument("--modes", default="{}")
    args = parser.parse_args()
    modes = json.loads(args.modes)
    for case_json, path in zip(args.case_json, args.result):
        mode = modes.get(json.loads(case_json)["workload"], "ok")
        if mode == "crash":
            os._exit(3)
        if mode == "hang":
            time.sleep(60)
        case = json.loads(case_json)
        with open(path + ".tmp", "w") as handle:
            json.dump({"engine": case["engine"], "workload": case["workload"], "status": "ok", "reason": None, "measurements": {"tokens_per_s": [1.0]},
                       "scalars": {"pid": os.getpid()}}, handle)
        os.replace(path + ".tmp", path)
''')


@pytest.fixture
def group_fake(tmp_path):
    """A command builder factory: the group worker, each (engine, workload) behaving as ``modes`` says (else ok)."""
    script = tmp_path / "group_worker.py"
    script.write_text(GROUP_WORKER)

    def given(modes):
        def build(case_json, result):
            engine = json.loads(case_json)["engine"]
            mine = {w: m for (e, w), m in modes.items() if e == engine}
            return [sys.executable, str(script), "--case-json", case_json, "--result", result,
                    "--modes", json.dumps(mine)]
        return build

    return given


def test_one_process_per_engine_and_a_crash_costs_only_its_case(tmp_path, group_fake):
    specs = [spec("fake-a", w) for w in ("train", "infer", "generate", "classify")]
    seen = []
    records = runner.run_group(specs, timeout_s=30, command=group_fake({("fake-a", "infer"): "crash"}),
                               emit=seen.append)
    assert records == seen
    assert [r.status for r in records] == ["ok", "crashed", "ok", "ok"]
    assert records[1].returncode == 3 and "exit code 3" in records[1].reason
    pids = [r.scalars.get("pid") for r in records]
    assert pids[2] == pids[3] and pids[0] != pids[2]  # the cases after the crash ran in one fresh process


def test_a_hanging_case_times_out_alone_and_the_group_goes_on(tmp_path, group_fake):
    specs = [spec("fake-a", w) for w in ("train", "infer", "generate")]
    records = runner.run_group(specs, timeout_s=3, command=group_fake({("fake-a", "infer"): "hang"}))
    assert [r.status for r in records] == ["ok", "timeout", "ok"]


def test_plan_runs_each_engine_once_per_round_in_a_seeded_shuffled_order():
    specs = [spec(f"e{i}", w, threads=2) for i in range(5) for w in ("train", "infer", "generate")]
    order = runner.plan(specs, rounds=2, seed=4)
    assert len(order) == 10 and all(len({s.engine for s in group}) == 1 and len(group) == 3 for _, group in order)
    engines = [[group[0].engine for r, group in order if r == k] for k in range(2)]
    assert sorted(engines[0]) == sorted(engines[1]) == [f"e{i}" for i in range(5)]
    assert runner.plan(specs, 2, 4) == order and runner.plan(specs, 2, 5) != order
    assert len({tuple(s.workload for s in group) for _, group in order}) > 1  # cases shuffled within groups
    with pytest.raises(ValueError, match="rounds"):
        runner.plan(specs, 0, 1)


def test_run_cases_per_engine_records_every_case_in_the_jsonl(tmp_path, group_fake):
    specs = [spec(e, w) for e in ("fake-a", "fake-b") for w in ("train", "infer")]
    jsonl = tmp_path / "runs.jsonl"
    records = runner.run_cases(specs, jsonl, rounds=2, command=group_fake({("fake-b", "infer"): "crash"}), log=Log())
    assert len(records) == 8 and read_jsonl(jsonl) == [r.to_dict() for r in records]
    status = {(r.engine, r.workload, r.round): r.status for r in records}
    assert sorted(k for k, v in status.items() if v != "ok") == [("fake-b", "infer", 0), ("fake-b", "infer", 1)]
