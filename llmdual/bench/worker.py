"""The one worker: runs the cases of one engine in this fresh process and writes one record per case.

``python -m llmdual.bench.worker --case-json JSON --result PATH [...]``: the engine is opened once, a matmul probe
measures the process's peak FLOP/s, then each case is checked and timed (:func:`llmdual.bench.workloads.run`) and
its record written atomically as it ends, with the host's load around it and a calibration probe run just before it
(:mod:`llmdual.bench.host`). An exception is that case's ``failed`` record; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from llmdual.bench import host, progress
from llmdual.bench.engines.table import host_env
from llmdual.bench.report.results import Record
from llmdual.bench.settings import Case
from llmdual.core.io import atomic_write


def _failure(case: Case, error: BaseException) -> Record:
    """A ``failed`` record naming the exception and the line that raised it (traceback on stderr)."""
    traceback.print_exception(error)
    where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    place = f" ({Path(where.filename).name}:{where.lineno})" if where else ""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return case.record("failed", f"{type(error).__name__}: {message[:400]}{place}")


def run_cases(cases: Sequence[Case], result_paths: Sequence[str]) -> None:
    """Open the cases' engine once, probe it, then run and write each case in order."""
    from llmdual.bench import workloads
    from llmdual.bench.engines.table import open_engine

    runtime, probe_flops, opened = None, None, None
    try:
        progress.phase("importing the framework and opening the engine")
        runtime = open_engine(cases[0].engine, cases[0].settings)
        progress.phase("matmul peak probe")
        probe_flops = runtime.probe_flops()
        progress.phase("preparing the engine's models")
        runtime.prefetch([(c.settings, workloads.TASKS[c.workload], c.workload == "generate") for c in cases])
    except Exception as error:  # noqa: BLE001 -- the engine cannot start here: every case says why
        opened = error
    for index, (case, path) in enumerate(zip(cases, result_paths)):
        progress.start_case(index)
        if opened is not None:
            record = _failure(case, opened)
        else:
            try:
                progress.phase("calibration probe")
                calibration = host.calibrate()
                before = host.snapshot()
                record = workloads.run(runtime, case)
                record.scalars.update(host.between(before, host.snapshot()), calibration_s=calibration,
                                      probe_flops=probe_flops)
            except Exception as error:  # noqa: BLE001 -- any failure of a case is its record
                record = _failure(case, error)
        text = json.dumps(record.to_dict(), allow_nan=False)
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the ``--case-json``/``--result`` pairs, fix the Keras backend before Keras loads, run them."""
    parser = argparse.ArgumentParser(description="run benchmark cases of one engine in this process")
    parser.add_argument("--case-json", action="append", required=True, help="a case as JSON (repeatable)")
    parser.add_argument("--result", action="append", required=True, help="its result file (one per case)")
    args = parser.parse_args(argv)
    if len(args.case_json) != len(args.result):
        parser.error("give one --result per --case-json")
    try:
        cases = [Case.from_json(text) for text in args.case_json]
    except (ValueError, TypeError) as error:
        parser.error(f"--case-json: {error}")
    if len({case.engine for case in cases}) != 1:
        parser.error("the cases of one worker must share their engine")
    os.environ.update(host_env(cases[0].engine))  # the runner sets it too; this keeps a manual run honest
    run_cases(cases, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
