"""A busy host cannot fake a verdict: the /proc readings the worker records, the busy-case judgement, the withheld
comparisons and the closing on-screen block, on synthetic results (fast)."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from llmdual.bench import host
from llmdual.bench.report import hostload, onscreen, results, verdict
from llmdual.core.config import Config

TINY = Config.preset("tiny").to_dict()
QUIET = {"host_others": 0.02, "host_steal": 0.0, "host_load1": 1.0, "host_cpu_mhz": 2600.0, "calibration_s": 1e-3}


def run(engine, workload, mean, seed, **host_scalars):
    """One round of ``engine`` at the tiny point: 15 throughput samples around ``mean`` and its host readings."""
    values = np.random.default_rng(seed).normal(mean, 10.0, 15)
    metric = results.WORKLOAD_METRICS[workload][0]
    point = {"config": TINY, "batch_size": 4, "seq_len": 32, "device": "cpu", "dtype": "float32"}
    return {"engine": engine, "workload": workload, "settings": point, "round": 0, "status": "ok", "reason": None,
            "measurements": {metric: list(map(float, values))},
            "scalars": {"warmup_s": 1.5, **QUIET, **host_scalars}, "returncode": 0, "wall_s": 3.0,
            "child_peak_rss_mb": 300.0, "stderr_tail": ""}


def document(*runs, rounds=2):
    settings = {"seed": 0, "preset": "tiny", "config": TINY, "points": [[4, 32]], "dtype": "float32", "threads": 2,
                "rounds": rounds}
    return results.build_document({"gpus": [], "threads": 2, "cpu_model": "Test CPU"}, settings, list(runs))


def pair(**torch_host):
    """Keras/JAX 1.5x PyTorch on train and infer, far beyond any margin; PyTorch's host readings as given."""
    return document(run("keras-jax", "train", 1500, 1), run("torch-eager", "train", 1000, 2, **torch_host),
                    run("keras-jax", "infer", 3000, 3), run("torch-eager", "infer", 2000, 4))


def test_a_quiet_host_lets_a_clear_lead_win():
    outcome = verdict.winners(pair())
    assert outcome["train tokens_per_s"] == outcome["infer tokens_per_s"] == "Keras/JAX"
    assert hostload.assess(pair()).busy == {}
    assert any(line.startswith("- Host: quiet during every case") for line in verdict.verdict(pair(), "training"))


@pytest.mark.parametrize("busy", [
    {"host_others": hostload.OTHERS_MAX + 0.05},
    {"host_steal": hostload.STEAL_MAX + 0.05},
    {"calibration_s": 1e-3 * (hostload.PROBE_SLOWER_MAX + 0.5)},
], ids=["other processes", "steal", "slow probe"])
def test_a_busy_case_withholds_the_speed_comparisons_it_is_part_of_and_only_those(busy):
    doc = pair(**busy)
    outcome = verdict.winners(doc)
    assert outcome["train tokens_per_s"] == "withheld" and outcome["train warmup_s"] == "withheld"
    assert outcome["infer tokens_per_s"] == "Keras/JAX"  # its cases ran on a quiet host
    assert outcome["train peak_rss_mb"] != "withheld"  # memory is not moved by others' CPU use
    [line] = [l for l in verdict.verdict(doc, "training") if l.startswith("- **train**, throughput")]
    assert "withheld: the host was busy during torch-eager train" in line and "wins" not in line


def test_a_busy_loser_also_withholds_the_win_it_would_have_handed_out():
    doc = document(run("keras-jax", "train", 1500, 1, host_others=0.6), run("torch-eager", "train", 1000, 2),
                   run("keras-tensorflow", "train", 900, 3))
    assert verdict.winners(doc)["train tokens_per_s"] == "withheld"


def test_thresholds_are_strict_and_a_probe_is_judged_against_the_runs_median():
    assert hostload.round_reasons({**QUIET, "host_others": hostload.OTHERS_MAX}, 1e-3) == []
    [why] = hostload.round_reasons({**QUIET, "host_others": 0.45}, 1e-3)
    assert why == "other processes used 45% of its CPUs"
    [why] = hostload.round_reasons({**QUIET, "calibration_s": 4e-3}, 1e-3)
    assert why.startswith("its calibration probe ran 4.0× slower")
    assert hostload.round_reasons({"host_others": None, "calibration_s": 4e-3}, None) == []  # unreadable: no claim


def test_a_document_without_host_readings_is_judged_as_before():
    doc = pair()
    for case in doc["cases"]:
        for record in case["runs"]:
            record["scalars"] = {"warmup_s": 1.5}
    assert hostload.assess(doc) == hostload.HostLoad(None)
    assert verdict.winners(doc)["train tokens_per_s"] == "Keras/JAX"


def test_the_closing_block_gives_each_priority_its_line_caveats_and_files_within_100_columns():
    doc = pair(host_others=0.45, calibration_s=0.016)
    text = onscreen.block(doc, ["bench-results/report.md", "bench-results/results.json"])
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= onscreen.WIDTH
    assert {p for p in verdict.PRIORITIES if any(line.startswith(f"  {p} ") for line in lines)} == \
        set(verdict.PRIORITIES)
    training = next(line for line in lines if line.startswith("  training "))
    assert "withheld: the host was busy during torch-eager" in training
    inference = next(line for line in lines if line.startswith("  inference "))
    medians = {c["engine"]: c["stats"]["tokens_per_s"]["median"] for c in doc["cases"] if c["workload"] == "infer"}
    assert f"Keras/JAX wins, {medians['keras-jax'] / medians['torch-eager']:.2f}× faster than PyTorch" in inference
    assert "The host was busy during torch-eager train (other processes used 45% of its CPUs" in text
    assert text.endswith("  bench-results/report.md\n  bench-results/results.json")


def test_a_winner_that_needs_a_setting_says_so_on_screen():
    doc = document(run("keras-tensorflow-xla", "train", 1500, 1), run("torch-eager", "train", 1000, 2), rounds=1)
    [training] = [line for line in onscreen.block(doc).splitlines() if line.startswith("  training ")]
    assert "Keras/TensorFlow wins" in training and "(needs `jit_compile=True`)" in training
    assert "One round of fresh processes" in onscreen.block(doc)


def test_proc_stat_ticks_are_summed_over_the_given_cpus(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  30 0 6 60 4 0 0 10 0 0\n"
                    "cpu0 10 0 2 20 1 0 0 5 0 0\ncpu1 20 0 4 40 3 0 0 5 0 0\nintr 1 2 3\n")
    assert host.cpu_ticks(stat) == (10 + 2 + 20 + 1 + 5 + 20 + 4 + 40 + 3 + 5, 20 + 1 + 40 + 3, 10)
    assert host.cpu_ticks(stat, {1}) == (20 + 4 + 40 + 3 + 5, 43, 5)
    assert host.cpu_ticks(tmp_path / "absent") == (0, 0, 0)


def test_between_splits_busy_time_into_ours_and_others():
    start = host.Snapshot(total=1000, idle=400, steal=0, session_cpu_s=0.0, load1=1.0, cpu_mhz=None)
    # 1000 more ticks: 200 idle, 100 stolen, 700 busy of which 300 ticks were our session's
    end = host.Snapshot(total=2000, idle=600, steal=100, session_cpu_s=300 * host.TICK_S, load1=2.5, cpu_mhz=2000.0)
    seen = host.between(start, end)
    assert seen["host_others"] == pytest.approx(0.4) and seen["host_steal"] == pytest.approx(0.1)
    assert seen["host_load1"] == 2.5 and seen["host_cpu_mhz"] == 2000.0


def test_a_spinning_process_on_our_cpus_reads_as_other_processes_use():
    cpus = sorted(os.sched_getaffinity(0))
    hogs = [subprocess.Popen([sys.executable, "-c", (f"import os, time\nos.sched_setaffinity(0, {{{cpu}}})\n"
                              "end = time.time() + 20\nwhile time.time() < end: pass")], start_new_session=True)
            for cpu in cpus]
    try:
        time.sleep(0.3)
        before = host.snapshot()
        time.sleep(1.0)
        seen = host.between(before, host.snapshot())
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    # one hog per CPU leaves the others nearly all of our CPUs; 0.5 allows for scheduler and tick granularity
    assert seen["host_others"] > 0.5, seen
    assert host.calibrate() > 0


def test_a_host_busy_for_many_cases_is_counted_on_screen_and_named_case_by_case_in_the_report():
    busy = {"host_others": 0.7}
    doc = document(*(run(engine, workload, mean, seed, **busy) for seed, (engine, workload, mean) in enumerate(
        [("keras-jax", w, 1500) for w in ("train", "infer")] + [("torch-eager", w, 1000) for w in ("train", "infer")])))
    text = onscreen.block(doc)
    assert "The host was busy during 4 of 4 cases (the report names each and why)" in text
    assert "withheld: the host was busy during keras-jax, torch-eager" in text
    [host_line] = [line for line in verdict.verdict(doc, "training") if line.startswith("- Host: busy")]
    assert all(f"{e} {w} (other processes used 70% of its CPUs)" in host_line
               for e in ("keras-jax", "torch-eager") for w in ("train", "infer"))
