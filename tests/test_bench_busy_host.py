"""A real tiny run beside bounded CPU hogs: the verdict must withhold the win and say the host was busy."""

import os
import subprocess
import sys

from llmdual.bench import command
from llmdual.bench.report import verdict
from llmdual.bench.settings import BenchSettings

HOG_S = 90  # each hog ends by itself after this long even if the test dies before killing it


def test_a_run_beside_cpu_hogs_withholds_the_win_and_says_the_host_was_busy(tmp_path):
    settings = BenchSettings(preset="tiny", engines=("torch-eager", "keras-torch"), workloads=("infer",),
                             batch_sizes=(2,), seq_lens=(8,), warmup=0, repeats=3, rounds=1, threads=1,
                             device="cpu", charts=False, out=str(tmp_path / "out"))
    # one hog per usable CPU, so the worker (pinned to one of them) shares its core whichever it is given
    hogs = [subprocess.Popen([sys.executable, "-c", (f"import os, time\nos.sched_setaffinity(0, {{{cpu}}})\n"
                              f"end = time.time() + {HOG_S}\nwhile time.time() < end: pass")],
                             start_new_session=True) for cpu in sorted(os.sched_getaffinity(0))]
    lines = []
    try:
        doc, _ = command.run(settings, lines.append)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert [c["status"] for c in doc["cases"]] == ["ok", "ok"], [c["reason"] for c in doc["cases"]]
    assert verdict.winners(doc)["infer tokens_per_s"] == "withheld"
    block = lines[-1]
    assert "withheld: the host was busy during" in block and "The host was busy during" in block
    report = (tmp_path / "out" / "report.md").read_text()
    assert "withheld: the host was busy during" in report and "- Host: busy during" in report
