"""The workloads, run the same way on every engine: build, check against the expected outputs, then time.

A mismatch stops the case before anything is timed; the check and the warm-up together are ``warmup_s``.
``train``: optimizer steps -> ``tokens_per_s``; ``infer``/``classify``: no-grad forwards -> ``tokens_per_s`` /
``sequences_per_s``; ``generate``: greedy generations at batch 1 and at the batch, each run whole by the
engine's own loop -> ``tokens_per_s_b1``, ``tokens_per_s_batch``, and streamed a step at a time at batch 1 ->
``ttft_s``, ``token_latency_s``; ``kv``: one step at full context, with the KV cache and
recomputing the prefix -> ``kv_cached_s``, ``kv_recompute_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.bench import expected, progress
from llmdual.bench.engines.runtime import Runtime
from llmdual.bench.engines.table import ENGINES
from llmdual.bench.env import peak_rss_mb
from llmdual.bench.inputs import CHECK_STEPS, Inputs, train_config
from llmdual.bench.report.results import Record
from llmdual.bench.settings import Case
from llmdual.bench.timing import looped, reset_peak_rss, streamed, time_calls

TASKS = {"train": "lm", "infer": "lm", "generate": "lm", "classify": "classifier", "kv": "lm"}
KV_REPEATS = 8  # a single decoding step is cheap: more repeats for the same noise


def _with_compile(phase: str, case: Case) -> str:
    """A phase's name, saying so where its engine compiles (the first calls of each shape take long)."""
    engine = ENGINES.get(case.engine)
    compiles = engine is not None and bool(engine.options.get("compile") or engine.options.get("jit_compile"))
    return f"{phase}; {progress.COMPILING}" if compiles else phase


def _refused(record: Record, diff: float, reason: str | None, scalar: str = "max_abs_diff") -> bool:
    record.scalars[scalar] = diff
    if reason is not None:
        record.status, record.reason = "mismatch", reason
    return reason is not None


def _timed(record: Record, metric: str, fn: Callable[[], Any], case: Case, started: float, per_call: float,
           repeats: int | None = None) -> None:
    """Warm up and time ``fn``; ``metric`` is ``per_call`` units per second (or seconds when ``per_call`` is 0)."""
    s = case.settings
    progress.phase(_with_compile("warm-up", case))
    times, _ = time_calls(fn, s.warmup, repeats or s.repeats, s.budget_s, on_timing=lambda: progress.phase("timing"))
    record.scalars.setdefault("warmup_s", time.perf_counter() - started - sum(times))
    record.measurements[metric] = [per_call / t for t in times] if per_call else times


def _infer(runtime: Runtime, case: Case, inputs: Inputs, want: Mapping[str, np.ndarray], record: Record,
           tol: float) -> None:
    classify = record.workload == "classify"
    run = runtime.forward(inputs.x, inputs.mask if classify else None)
    started = time.perf_counter()
    diff, reason = expected.check(record.workload, {"logits": runtime.to_numpy(run())}, want, tol)
    if not _refused(record, diff, reason):
        B, T = inputs.x.shape
        _timed(record, "sequences_per_s" if classify else "tokens_per_s", run, case, started,
               B if classify else B * T)


def _train(runtime: Runtime, case: Case, inputs: Inputs, want: Mapping[str, np.ndarray], record: Record,
           tol: float) -> None:
    """Check the first steps' loss and gradient norm (only the first for a reference: its own optimizer)."""
    step, batch = runtime.trainer(train_config(case.settings, case.batch_size)), (inputs.x, inputs.y)
    started = time.perf_counter()
    losses, norms = zip(*(step(batch) for _ in range(1 if ENGINES[record.engine].reference else CHECK_STEPS)))
    got = {"loss": np.array(losses)} | ({} if None in norms else {"grad_norm": np.array(norms)})
    diff, reason = expected.check("train", got, want, tol)
    if not _refused(record, diff, reason, "max_rel_diff"):
        _timed(record, "tokens_per_s", lambda: step(batch), case, started, inputs.x.size)


def _generate(runtime: Runtime, case: Case, inputs: Inputs, want: Mapping[str, np.ndarray], record: Record,
              tol: float) -> None:
    """Check prefill logits and greedy tokens, streamed and looped (decoders), at both batch sizes, then time
    whole generations (throughput) and a streamed one (time to first token, per-token latency)."""
    settings = case.settings
    new, prompts = settings.new_tokens, inputs.prompts(case.prompt_len)
    started, got = time.perf_counter(), {}
    for name, prompt in prompts.items():
        if runtime.decodes:
            run = streamed(runtime.decoder(True), prompt, new)
            got[f"{name}.logits"], got[f"{name}.tokens"] = run.first_logits, run.tokens
            got[f"{name}.looped.tokens"] = looped(runtime.decoder(True), prompt, new)[0]
        else:
            got[f"{name}.tokens"] = runtime.generate(prompt, new)
    exact = expected.exact_tokens(settings.dtype, settings.uses_tf32)
    diff, reason = expected.check("generate", got, want, tol, exact)
    if _refused(record, diff, reason):
        return
    if not runtime.decodes:
        for name, metric in (("b1", "tokens_per_s_b1"), ("batch", "tokens_per_s_batch")):
            prompt = prompts[name]
            _timed(record, metric, lambda p=prompt: runtime.generate(p, new), case, started, len(prompt) * new)
        return
    decoder = runtime.decoder(True)
    progress.phase(_with_compile("warm-up", case))
    for _ in range(settings.warmup):
        for prompt in prompts.values():
            looped(decoder, prompt, new)
        streamed(decoder, prompts["b1"], new)
    record.scalars["warmup_s"] = time.perf_counter() - started
    progress.phase("timing")
    m: dict[str, list[float]] = {"tokens_per_s_b1": [], "tokens_per_s_batch": [], "ttft_s": [], "token_latency_s": []}
    for _ in range(settings.repeats):
        m["tokens_per_s_b1"].append(new / looped(decoder, prompts["b1"], new)[1])
        m["tokens_per_s_batch"].append(len(prompts["batch"]) * new / looped(decoder, prompts["batch"], new)[1])
        one = streamed(decoder, prompts["b1"], new)
        m["ttft_s"].append(one.ttft_s)
        m["token_latency_s"].extend(one.step_s)
    record.measurements.update({k: v for k, v in m.items() if v})


def _kv(runtime: Runtime, case: Case, inputs: Inputs, want: Mapping[str, np.ndarray], record: Record,
        tol: float) -> None:
    """One decoding step at full context, with the KV cache and by recomputing the whole prefix."""
    started = time.perf_counter()
    steps = {name: expected.kv_step(runtime.decoder(use_cache), inputs.context)
             for name, use_cache in (("cached", True), ("recompute", False))}
    diff, reason = expected.check("kv", {f"{name}.logits": step() for name, step in steps.items()}, want, tol)
    if not _refused(record, diff, reason):
        for name, step in steps.items():
            _timed(record, f"kv_{name}_s", step, case, started, 0, KV_REPEATS * case.settings.repeats)


WORKLOAD_RUNS = {"train": _train, "infer": _infer, "classify": _infer, "generate": _generate, "kv": _kv}


def run(runtime: Runtime, case: Case) -> Record:
    """Build, check and time one case on an open runtime (exceptions propagate: the worker records them)."""
    record, path, settings = case.record("ok"), case.expected, case.settings
    if not path or not Path(path).is_file():
        record.status, record.reason = "failed", f"no expected outputs to check against ({path or 'none computed'})"
        return record
    want = expected.load(path)
    tol = (ENGINES[case.engine].tolerance if case.engine in ENGINES else None) or settings.tolerance
    reset_peak_rss()
    runtime.reset_peaks()
    try:
        progress.phase("building the model")
        record.scalars.update(runtime.prepare(settings, TASKS[case.workload], case.workload in ("generate", "kv")))
        inputs = Inputs.of(settings, case.batch_size, case.seq_len)
        progress.phase(_with_compile("checking against the expected outputs", case))
        WORKLOAD_RUNS[case.workload](runtime, case, inputs, want, record, tol)
        record.scalars["tolerance"] = tol
        record.scalars["peak_rss_mb"] = peak_rss_mb()
        device = runtime.peak_device_mb()
        if device is not None:
            record.scalars["peak_device_mb"] = device
    finally:
        runtime.release()
    return record
