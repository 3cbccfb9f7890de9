"""Worker process of the performance bar: build one engine, check it computes llmdual's numbers, time it.

Run by ``llmdual.bench.perf_bar`` through ``llmdual.bench.runner.run_case`` (fresh process, thread settings,
crash isolation) as ``python -m llmdual.bench.ref_worker --case-json JSON --result PATH``, following the
runner's worker contract. The case's ``engine`` is a name in ``llmdual.bench.ref_engines.ENGINES``; its
``settings`` hold ``config`` (``Config.to_dict()``), ``train`` (``TrainConfig`` fields), ``batch_size``,
``seq_len``, ``prompt_len``, ``new_tokens``, ``warmup`` and ``repeats`` (per workload), ``budget_s`` (timed
seconds after which a workload stops repeating, at least 3 repeats), ``seed``, ``tolerance``, ``threads`` and
``nanogpt`` (path or null).

Before anything is timed, the engine's logits on the batch must match llmdual's eager model of the same
framework on the same weights within ``tolerance`` (nanoGPT: ``reference.NANOGPT_TOLERANCE``, for its exact
GELU), and its greedy generation must give llmdual's tokens; otherwise the result is ``mismatch`` and nothing
is timed. Measurements: ``train_tokens_per_s``, ``infer_tokens_per_s``, ``generate_tokens_per_s`` (new tokens
over the whole ``generate`` call, prefill included) and ``kv_cached_s`` / ``kv_recompute_s`` (seconds for one
token at the full context), one value per timed repeat.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.bench.env import peak_rss_mb
from llmdual.bench.ref_engines import ENGINES


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, budget_s: float = math.inf,
               min_repeats: int = 3) -> tuple[list[float], float]:
    """Seconds per call for up to ``repeats`` calls after ``warmup`` untimed ones (fewer, but at least
    ``min_repeats``, once the timed calls have taken ``budget_s``), and the warm-up's total seconds."""
    gc.collect()
    started = time.perf_counter()
    for _ in range(warmup):
        fn()
    warmup_s = time.perf_counter() - started
    times: list[float] = []
    while len(times) < repeats and (len(times) < min_repeats or sum(times) < budget_s):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times, warmup_s


def run(engine_name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Build, check and time one engine; the result object of the runner's worker contract."""
    from llmdual.bench import reference
    from llmdual.bench.ref_engines import Inputs, build_engine
    from llmdual.config import Config
    from llmdual.training import TrainConfig
    from llmdual.weights import init_weights

    spec = ENGINES[engine_name]
    config = Config.from_dict(settings["config"])
    B, T = settings["batch_size"], settings["seq_len"]
    train = TrainConfig(**settings["train"], batch_size=B, progress=False)
    inputs = Inputs.make(config, B, T, settings["prompt_len"], settings["seed"])
    weights = init_weights(config, "lm", settings["seed"])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmdual-ref-") as tmp:
        reference.write_hf_checkpoint(config, weights, tmp)
        engine = build_engine(engine_name, config, weights, inputs, train, settings["new_tokens"], tmp,
                              settings.get("threads"), settings.get("nanogpt"))
    scalars: dict[str, Any] = {"build_s": time.perf_counter() - started}
    tolerance = reference.NANOGPT_TOLERANCE if spec.family == "nanogpt" else settings["tolerance"]
    diff = float(np.abs(engine.logits - engine.expected).max())
    scalars.update(max_abs_diff=diff, tolerance=tolerance)
    if not diff <= tolerance:
        return {"status": "mismatch", "reason": f"logits differ from llmdual's by {diff:.3g} > {tolerance:g}",
                "measurements": {}, "scalars": scalars}
    if engine.greedy is False:
        return {"status": "mismatch", "reason": "greedy generation gives other tokens than llmdual's",
                "measurements": {}, "scalars": scalars}
    measurements = {}
    per_call = {"train": B * T, "infer": B * T, "generate": settings["new_tokens"]}
    for workload, fn in engine.work.items():
        group = "kv" if workload.startswith("kv_") else workload
        times, warmup_s = time_calls(fn, settings["warmup"][group], settings["repeats"][group],
                                     settings.get("budget_s", math.inf))
        scalars[f"warmup_{workload}_s"] = warmup_s
        if workload in per_call:
            measurements[f"{workload}_tokens_per_s"] = [per_call[workload] / t for t in times]
        else:
            measurements[f"{workload}_s"] = times
    scalars["peak_rss_mb"] = peak_rss_mb()
    return {"status": "ok", "reason": None, "measurements": measurements, "scalars": scalars}


def main(argv: list[str] | None = None) -> int:
    """Parse the runner's arguments, fix the Keras backend before any import of Keras, run, write the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case-json", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    case = json.loads(args.case_json)
    spec = ENGINES[case["engine"]]
    if spec.keras_backend:
        os.environ["KERAS_BACKEND"] = spec.keras_backend
    try:
        result = run(case["engine"], case["settings"])
    except Exception as error:  # noqa: BLE001 -- any failure of an engine is its result, with where it happened
        where = traceback.extract_tb(error.__traceback__)[-1]
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(error).__name__}: {error} "
                                                f"({Path(where.filename).name}:{where.lineno})",
                  "measurements": {}, "scalars": {}}
    Path(args.result).write_text(json.dumps(result, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
