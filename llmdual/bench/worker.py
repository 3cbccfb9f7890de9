"""The benchmark worker: runs cases of one engine in this (fresh) process, following the runner's contract.

``python -m llmdual.bench.worker --case-json JSON --result PATH [--case-json JSON --result PATH ...]`` (see
:mod:`llmdual.bench.runner`): the engine's framework is imported once, a matmul probe measures the process's
peak FLOP/s (``probe_flops``, reported with every case), then each case is built, checked against the
PyTorch reference and timed by :func:`llmdual.bench.workloads.run`, and its result file written (atomically)
as soon as it ends. An exception inside a case is that case's ``failed`` result, naming the error and where
it was raised; the remaining cases still run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmdual.bench.results import ENGINES
from llmdual.files import atomic_write


def _failure(error: BaseException) -> dict[str, Any]:
    """A ``failed`` result naming the exception and the line that raised it (traceback on stderr)."""
    traceback.print_exception(error)
    where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    place = f" ({Path(where.filename).name}:{where.lineno})" if where else ""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return {"status": "failed", "reason": f"{type(error).__name__}: {message[:400]}{place}",
            "measurements": {}, "scalars": {}}


def _write(path: str, result: dict[str, Any]) -> None:
    text = json.dumps(result, allow_nan=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def run_cases(cases: Sequence[dict[str, Any]], result_paths: Sequence[str]) -> None:
    """Open the cases' engine once, probe it, then run and write each case in order."""
    from llmdual.bench import workloads
    from llmdual.bench.engines import open_engine

    engine, probe_flops, opened = None, None, None
    try:
        engine = open_engine(cases[0]["engine"], cases[0]["settings"])
        probe_flops = engine.probe_flops()
        engine.prefetch([(c["settings"], workloads.TASKS[c["workload"]], c["workload"] == "generate")
                         for c in cases if c["workload"] in workloads.TASKS])
    except Exception as error:  # the engine cannot start here: every case says why
        opened = _failure(error)
    for case, path in zip(cases, result_paths):
        if opened is not None:
            result = opened
        else:
            try:
                result = workloads.run(engine, case["workload"], case["settings"]).to_dict()
                result["scalars"]["probe_flops"] = probe_flops
            except Exception as error:
                result = _failure(error)
        _write(path, result)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the ``--case-json``/``--result`` pairs, fix the Keras backend before Keras loads, run them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case-json", action="append", required=True, help="a case as JSON (repeatable)")
    parser.add_argument("--result", action="append", required=True, help="its result file (one per case)")
    args = parser.parse_args(argv)
    if len(args.case_json) != len(args.result):
        parser.error("give one --result per --case-json")
    cases = [json.loads(text) for text in args.case_json]
    if len({case["engine"] for case in cases}) != 1:
        parser.error("the cases of one worker must share their engine")
    engine = ENGINES.get(cases[0]["engine"])
    if engine is not None and engine.keras_backend:  # the runner sets it too; this keeps a manual run honest
        os.environ["KERAS_BACKEND"] = engine.keras_backend
    run_cases(cases, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
