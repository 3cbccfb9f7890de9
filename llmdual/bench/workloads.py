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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.bench import expected
from llmdual.bench.engines import ENGINES
from llmdual.bench.env import peak_rss_mb
from llmdual.bench.inputs import CHECK_STEPS, Inputs, train_config
from llmdual.bench.results import Record
from llmdual.bench.timing import looped, reset_peak_rss, streamed, time_calls
from llmdual.core.recipe import Batch, TrainConfig

TASKS = {"train": "lm", "infer": "lm", "generate": "lm", "classify": "classifier", "kv": "lm"}
KV_REPEATS = 8  # a single decoding step is cheap: more repeats for the same noise


class Runtime:
    """An engine opened in a worker process: what a workload needs from it. Subclasses build the model in
    ``prepare`` and override what they support; every call returns only once its work is done."""

    decodes = True  # generation through ``decoder()``; False: the engine's own ``generate`` (references)

    def prepare(self, settings: Mapping[str, Any], task: str, kv_cache: bool) -> dict[str, float]:
        """Build (or export and load) the case's model; scalars such as ``build_s``."""
        raise NotImplementedError

    def prefetch(self, graphs: Sequence[tuple[Mapping[str, Any], str, bool]]) -> None:
        """Work the process's cases (settings, task, KV cache) share, done once before them (ONNX exports)."""

    def forward(self, ids: np.ndarray, mask: np.ndarray | None) -> Callable[[], Any]:
        """A call running one no-grad forward of these inputs."""
        raise NotImplementedError

    def to_numpy(self, output: Any) -> np.ndarray:
        """A forward's output as float32 numpy."""
        return np.asarray(output, np.float32)

    def trainer(self, cfg: TrainConfig) -> Callable[[Batch], tuple[float, float | None]]:
        """One optimizer step: a numpy batch in, (loss, pre-clip gradient norm or None) out."""
        raise NotImplementedError

    def decoder(self, use_cache: bool = True) -> Any:
        """An ``llmdual.core.decoding.Decoder`` over the model."""
        raise NotImplementedError

    def generate(self, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
        """Greedy tokens (B, new_tokens) by the engine's own generate (when ``decodes`` is False)."""
        raise NotImplementedError

    def probe_flops(self) -> float:
        """FLOP/s of a square matmul at the case's precision (``llmdual.bench.timing.probe``)."""
        raise NotImplementedError

    def reset_peaks(self) -> None:
        """Start a new device-memory peak (no-op on CPU)."""

    def peak_device_mb(self) -> float | None:
        """Device memory the allocator peaked at since ``reset_peaks``; None on CPU."""
        return None

    def release(self) -> None:
        """Drop the case's model so the next case starts from the framework's baseline."""


def _refused(record: Record, diff: float, reason: str | None, scalar: str = "max_abs_diff") -> bool:
    record.scalars[scalar] = diff
    if reason is not None:
        record.status, record.reason = "mismatch", reason
    return reason is not None


def _timed(record: Record, metric: str, fn: Callable[[], Any], settings: Mapping[str, Any], started: float,
           per_call: float, repeats: int | None = None) -> None:
    """Warm up and time ``fn``; ``metric`` is ``per_call`` units per second (or seconds when ``per_call`` is 0)."""
    times, _ = time_calls(fn, settings["warmup"], repeats or settings["repeats"], settings.get("budget_s"))
    record.scalars.setdefault("warmup_s", time.perf_counter() - started - sum(times))
    record.measurements[metric] = [per_call / t for t in times] if per_call else times


def _infer(runtime: Runtime, settings: Mapping[str, Any], inputs: Inputs, want: Mapping[str, np.ndarray],
           record: Record, tol: float) -> None:
    classify = record.workload == "classify"
    run = runtime.forward(inputs.x, inputs.mask if classify else None)
    started = time.perf_counter()
    diff, reason = expected.check(record.workload, {"logits": runtime.to_numpy(run())}, want, tol)
    if not _refused(record, diff, reason):
        B, T = inputs.x.shape
        _timed(record, "sequences_per_s" if classify else "tokens_per_s", run, settings, started,
               B if classify else B * T)


def _train(runtime: Runtime, settings: Mapping[str, Any], inputs: Inputs, want: Mapping[str, np.ndarray],
           record: Record, tol: float) -> None:
    """Check the first steps' loss and gradient norm (only the first for a reference: its own optimizer)."""
    step, batch = runtime.trainer(train_config(settings)), (inputs.x, inputs.y)
    started = time.perf_counter()
    losses, norms = zip(*(step(batch) for _ in range(1 if ENGINES[record.engine].reference else CHECK_STEPS)))
    got = {"loss": np.array(losses)} | ({} if None in norms else {"grad_norm": np.array(norms)})
    diff, reason = expected.check("train", got, want, tol)
    if not _refused(record, diff, reason, "max_rel_diff"):
        _timed(record, "tokens_per_s", lambda: step(batch), settings, started, inputs.x.size)


def _generate(runtime: Runtime, settings: Mapping[str, Any], inputs: Inputs, want: Mapping[str, np.ndarray],
              record: Record, tol: float) -> None:
    """Check prefill logits and greedy tokens, streamed and looped (decoders), at both batch sizes, then time
    whole generations (throughput) and a streamed one (time to first token, per-token latency)."""
    new, prompts = settings["new_tokens"], inputs.prompts(settings.get("prompt_len"))
    started, got = time.perf_counter(), {}
    for name, prompt in prompts.items():
        if runtime.decodes:
            run = streamed(runtime.decoder(True), prompt, new)
            got[f"{name}.logits"], got[f"{name}.tokens"] = run.first_logits, run.tokens
            got[f"{name}.looped.tokens"] = looped(runtime.decoder(True), prompt, new)[0]
        else:
            got[f"{name}.tokens"] = runtime.generate(prompt, new)
    exact = expected.exact_tokens(settings["dtype"], bool(settings.get("tf32")))
    diff, reason = expected.check("generate", got, want, tol, exact)
    if _refused(record, diff, reason):
        return
    if not runtime.decodes:
        for name, metric in (("b1", "tokens_per_s_b1"), ("batch", "tokens_per_s_batch")):
            prompt = prompts[name]
            _timed(record, metric, lambda p=prompt: runtime.generate(p, new), settings, started, len(prompt) * new)
        return
    decoder = runtime.decoder(True)
    for _ in range(settings["warmup"]):
        for prompt in prompts.values():
            looped(decoder, prompt, new)
        streamed(decoder, prompts["b1"], new)
    record.scalars["warmup_s"] = time.perf_counter() - started
    m: dict[str, list[float]] = {"tokens_per_s_b1": [], "tokens_per_s_batch": [], "ttft_s": [], "token_latency_s": []}
    for _ in range(settings["repeats"]):
        m["tokens_per_s_b1"].append(new / looped(decoder, prompts["b1"], new)[1])
        m["tokens_per_s_batch"].append(len(prompts["batch"]) * new / looped(decoder, prompts["batch"], new)[1])
        one = streamed(decoder, prompts["b1"], new)
        m["ttft_s"].append(one.ttft_s)
        m["token_latency_s"].extend(one.step_s)
    record.measurements.update({k: v for k, v in m.items() if v})


def _kv(runtime: Runtime, settings: Mapping[str, Any], inputs: Inputs, want: Mapping[str, np.ndarray],
        record: Record, tol: float) -> None:
    """One decoding step at full context, with the KV cache and by recomputing the whole prefix."""
    started = time.perf_counter()
    steps = {name: expected.kv_step(runtime.decoder(use_cache), inputs.context)
             for name, use_cache in (("cached", True), ("recompute", False))}
    diff, reason = expected.check("kv", {f"{name}.logits": step() for name, step in steps.items()}, want, tol)
    if not _refused(record, diff, reason):
        for name, step in steps.items():
            _timed(record, f"kv_{name}_s", step, settings, started, 0, KV_REPEATS * settings["repeats"])


WORKLOAD_RUNS = {"train": _train, "infer": _infer, "classify": _infer, "generate": _generate, "kv": _kv}


def run(runtime: Runtime, engine: str, workload: str, settings: Mapping[str, Any]) -> Record:
    """Build, check and time one case on an open runtime (exceptions propagate: the worker records them)."""
    record = Record(engine, workload, dict(settings))
    path = settings.get("expected")
    if not path or not Path(path).is_file():
        record.status, record.reason = "failed", f"no expected outputs to check against ({path or 'none computed'})"
        return record
    want = expected.load(path)
    tol = (ENGINES[engine].tolerance if engine in ENGINES else None) or settings["tolerance"]
    reset_peak_rss()
    runtime.reset_peaks()
    try:
        record.scalars.update(runtime.prepare(settings, TASKS[workload], workload in ("generate", "kv")))
        WORKLOAD_RUNS[workload](runtime, settings, Inputs.of(settings), want, record, tol)
        record.scalars["tolerance"] = tol
        record.scalars["peak_rss_mb"] = peak_rss_mb()
        device = runtime.peak_device_mb()
        if device is not None:
            record.scalars["peak_device_mb"] = device
    finally:
        runtime.release()
    return record
