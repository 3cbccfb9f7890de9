"""Progress never goes quiet: the worker's phases reach the runner's live line, a heartbeat repeats it outside a
terminal, the ETA learns from finished cases; and the terminal tables fit 100 columns."""

import io
import sys
import textwrap
import time

from rich.console import Console

from llmdual.bench import progress, runner
from llmdual.bench.report import results, tables
from llmdual.bench.settings import BenchSettings, Case
from llmdual.core.config import Config

# A worker that reports two phases through the status file, lingers in the second, then writes its result.
PHASED_WORKER = textwrap.dedent('''
    import json, sys, time
    from llmdual.bench import progress
    case, result = json.loads(sys.argv[2]), sys.argv[4]
    progress.phase("building the model")
    time.sleep(0.5)
    progress.phase("timing")
    time.sleep(2.5)
    with open(result, "w") as handle:
        json.dump({"engine": case["engine"], "workload": case["workload"], "status": "ok", "reason": None,
                   "measurements": {"tokens_per_s": [1.0, 1.0, 1.0]}, "scalars": {}}, handle)
''')


def test_worker_phases_reach_the_live_line_and_a_heartbeat_repeats_it(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(PHASED_WORKER)
    settings = BenchSettings(preset="tiny", batch_sizes=(2,), seq_lens=(8,), device="cpu")
    case = Case("torch-eager", "infer", settings, 2, 8)
    lines = []
    with progress.Progress(0, heartbeat_s=1.0, out=lines.append) as live:
        runner.run_cases([case], tmp_path / "runs.jsonl", log=live.log, live=live,
                         command=lambda case_json, result: [sys.executable, str(script), "--case-json", case_json,
                                                            "--result", result])
    phases = [line for line in lines if line.startswith("[1/1] torch-eager infer round 1: ")]
    assert any(": building the model (" in line for line in phases), lines
    timing = [line for line in phases if ": timing (" in line]
    # 2.5 s in "timing" with a 1 s heartbeat: its first line and at least one repeat
    assert len(timing) >= 2, lines
    assert lines[-1].startswith("[1/1] torch-eager infer round 1: ok in")


def test_the_eta_uses_each_cases_own_time_once_known_else_the_mean():
    live = progress.Progress(3)
    assert live.eta_s() is None and "ETA after the first case" in live.line()
    live.plan([("a", "train"), ("b", "infer"), ("a", "train")])
    live.finished("a", "train", 10.0)
    live.finished("b", "infer", 2.0)
    live.set_phase("timing", "a train round 2")
    # left: one a/train case, known to take 10 s, less the moment already spent in it
    assert 9.0 < live.eta_s() <= 10.0


def test_a_compiling_engine_says_so_while_it_checks():
    from llmdual.bench import workloads

    settings = BenchSettings(preset="tiny", batch_sizes=(2,), seq_lens=(8,), device="cpu")
    assert progress.COMPILING in workloads._with_compile("warm-up", Case("torch-compile", "train", settings, 2, 8))
    assert workloads._with_compile("warm-up", Case("torch-eager", "train", settings, 2, 8)) == "warm-up"


def _document():
    """Every workload's terminal columns at once, with the longest engine names and a long failure reason."""
    tiny = Config.preset("tiny").to_dict()
    point = {"config": tiny, "batch_size": 4, "seq_len": 32, "device": "cpu", "dtype": "float32"}
    runs = []
    for i, engine in enumerate(("kerashub-tensorflow-xla", "keras-tensorflow-xla", "torch-eager")):
        runs.append({"engine": engine, "workload": "generate", "settings": point, "status": "ok",
                     "measurements": {"tokens_per_s_b1": [123456.0 + i, 120000.0], "tokens_per_s_batch": [1e6, 9e5],
                                      "ttft_s": [0.0123, 0.0124], "token_latency_s": [0.00123, 0.00125]},
                     "scalars": {"warmup_s": 123.4, "build_s": 1.0}, "child_peak_rss_mb": 12345.0})
    runs.append({"engine": "keras-jax", "workload": "generate", "settings": point, "status": "crashed",
                 "reason": "killed by signal SIGKILL (likely out of memory: the kernel's OOM killer sends SIGKILL) "
                           * 3})
    return results.build_document({"gpus": []}, {"seed": 0}, runs)


def test_terminal_tables_fit_100_columns_with_whole_engine_names():
    doc = _document()
    console = Console(file=io.StringIO(), width=200)
    tables.print_tables(doc, console)
    out = console.file.getvalue()
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 100, out
    assert "kerashub-tensorflow-xla" in out and "keras-tensorflow-xla" in out  # never folded
    lines = []
    tables.print_tables(doc, lines.append)
    plain = "\n".join(lines)
    assert max(len(line) for line in plain.splitlines()) <= 100, plain
    assert "crashed: killed by signal SIGKILL" in plain
    header, _ = tables.workload_table(doc, "generate")  # the report keeps the full detail
    assert "model FLOP/s (MFU)" in header or "spread (IQR; 95% CI)" in header


def test_in_a_terminal_the_live_line_keeps_ticking_under_the_printed_lines():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with progress.Progress(3, console=console) as live:
        live.set_phase("building the model", "torch-eager train round 1")
        live.log("[1/3] keras-jax train round 1: ok in 1.0 s")
        time.sleep(1.6)  # the live line refreshes twice a second on its own
    out = console.file.getvalue()
    assert "[1/3] keras-jax train round 1: ok in 1.0 s\n" in out
    assert "torch-eager train round 1: building the model (0:00)" in out
    assert "torch-eager train round 1: building the model (0:01)" in out
