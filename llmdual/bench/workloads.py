"""The four benchmark workloads, timed the same way on every engine (framework-free: engines do the framework part).

Each case runs: build (``build_s``; ONNX engines also export: ``export_s``, ``file_mb``), the parity check
against the PyTorch reference (:mod:`llmdual.bench.expected`; a mismatch stops the case before anything is
timed), ``warmup`` untimed iterations, then ``repeats`` timed ones. The check's iterations and the warm-up
together are ``warmup_s`` (compilation lands there, never in the steady-state figures). Every timed call
returns only once its work is done: engines synchronise the device before the clock is read.

- ``train``: one optimizer step of llmdual's trainer (forward, loss, backward, clipping, AdamW) -> ``tokens_per_s``;
- ``infer``: a no-grad LM forward of the batch -> ``tokens_per_s``;
- ``classify``: a no-grad classifier forward of the padded batch -> ``sequences_per_s``;
- ``generate``: greedy decoding with the KV cache through ``llmdual.generate.Decoder``, one generation at batch
  1 and one at the case's batch per repeat -> ``ttft_s`` (prefill to first token, batch 1), ``token_latency_s``
  (every later token, batch 1), ``tokens_per_s_b1`` and ``tokens_per_s_batch`` (new tokens over the whole call).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from llmdual.bench import expected
from llmdual.bench.env import peak_rss_mb
from llmdual.bench.expected import CHECK_STEPS, Inputs
from llmdual.training import Batch, TrainConfig

TASKS = {"train": "lm", "infer": "lm", "generate": "lm", "classify": "classifier"}


class Engine(Protocol):
    """What a workload needs from an engine (implemented in ``engine_torch``, ``engine_keras``, ``engine_onnx``)."""

    def prepare(self, settings: Mapping[str, Any], task: str, kv_cache: bool) -> dict[str, float]:
        """Build (or export and load) the case's model; scalars such as ``build_s``."""
        ...

    def prefetch(self, graphs: Sequence[tuple[Mapping[str, Any], str, bool]]) -> None:
        """Work that the process's cases (settings, task, KV cache) share, done once before them: the ONNX
        exports; nothing for the native engines, whose cases each build their own model."""
        ...

    def forward(self, ids: np.ndarray, mask: np.ndarray | None) -> Callable[[], Any]:
        """A call running one no-grad forward of these inputs, returning once it is done."""
        ...

    def to_numpy(self, output: Any) -> np.ndarray:
        """A forward's output as float32 numpy."""
        ...

    def trainer(self, cfg: TrainConfig) -> Callable[[Batch], tuple[float, float]]:
        """llmdual's training step on the model: a numpy batch in, (loss, pre-clip gradient norm) out."""
        ...

    def decoder(self) -> Any:
        """An ``llmdual.generate.Decoder`` over the model."""
        ...

    def probe_flops(self) -> float:
        """FLOP/s of a square matmul at the case's precision (see ``llmdual.bench.flops.matmul_flop_rate``)."""
        ...

    def reset_peaks(self) -> None:
        """Start a new device-memory peak (no-op on CPU)."""
        ...

    def peak_device_mb(self) -> float | None:
        """Device memory the framework's allocator peaked at since ``reset_peaks``; None on CPU."""
        ...

    def release(self) -> None:
        """Drop the case's model so the next case starts from the framework's baseline."""
        ...


@dataclass
class Outcome:
    """A workload's result before it becomes the worker contract's JSON object."""

    status: str = "ok"
    reason: str | None = None
    measurements: dict[str, list[float]] = field(default_factory=dict)
    scalars: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "measurements": self.measurements,
                "scalars": self.scalars}


@dataclass
class Generation:
    """One greedy generation: tokens [B, new], the prefill's logits [B, V], and its clock readings."""

    tokens: np.ndarray
    first_logits: np.ndarray
    ttft_s: float
    step_s: list[float]
    total_s: float


def greedy(decoder: Any, prompt: np.ndarray, new_tokens: int) -> Generation:
    """Greedy decoding of ``new_tokens`` after an unpadded ``prompt`` [B, T], timing the prefill (to the first
    token) and each later step; the decoder returns numpy logits, so every reading follows finished work."""
    B = len(prompt)
    mask = np.ones_like(prompt)
    tokens = np.zeros((B, new_tokens), dtype=np.int64)
    start = time.perf_counter()
    logits, state = decoder.prefill(prompt, mask)
    first_logits = logits
    tokens[:, 0] = logits.argmax(-1)
    ttft = time.perf_counter() - start
    steps = []
    for t in range(1, new_tokens):
        began = time.perf_counter()
        mask = np.concatenate([mask, np.ones((B, 1), dtype=mask.dtype)], axis=1)
        logits, state = decoder.step(tokens[:, t - 1 : t], mask, state)
        tokens[:, t] = logits.argmax(-1)
        steps.append(time.perf_counter() - began)
    return Generation(tokens, np.asarray(first_logits, np.float32), ttft, steps, time.perf_counter() - start)


def seconds(fn: Callable[[], Any], count: int) -> list[float]:
    """Wall-clock seconds of ``count`` calls of ``fn``, one reading each."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def reset_peak_rss() -> None:
    """Make ``VmHWM`` start again from the current RSS (Linux ``clear_refs`` 5), so a case that shares its process
    with earlier ones reports its own peak above the framework's baseline; a no-op where unsupported."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _refused(outcome: Outcome, diff: float, reason: str | None, scalar: str = "max_abs_diff") -> bool:
    """Record the parity figure; mark the outcome a mismatch (nothing will be timed) if there is a reason."""
    outcome.scalars[scalar] = diff
    if reason is not None:
        outcome.status, outcome.reason = "mismatch", reason
    return reason is not None


def _infer(engine: Engine, settings: Mapping[str, Any], inputs: Inputs, want: Mapping[str, np.ndarray],
           outcome: Outcome, workload: str) -> None:
    """``infer`` and ``classify``: check the logits, then time forwards of the batch."""
    mask = inputs.mask if workload == "classify" else None
    run = engine.forward(inputs.x, mask)
    started = time.perf_counter()
    logits = engine.to_numpy(run())
    diff, reason = expected.check(workload, {"logits": logits}, want, settings["tolerance"])
    if _refused(outcome, diff, reason):
        return
    seconds(run, settings["warmup"])
    outcome.scalars["warmup_s"] = time.perf_counter() - started
    B, T = inputs.x.shape
    if workload == "classify":
        outcome.measurements["sequences_per_s"] = [B / t for t in seconds(run, settings["repeats"])]
    else:
        outcome.measurements["tokens_per_s"] = [B * T / t for t in seconds(run, settings["repeats"])]


def _train(engine: Engine, settings: Mapping[str, Any], inputs: Inputs, want: Mapping[str, np.ndarray],
           outcome: Outcome) -> None:
    """Check the first steps' loss and gradient norm, then time optimizer steps on the batch."""
    step = engine.trainer(expected.train_config(settings))
    batch = (inputs.x, inputs.y)
    started = time.perf_counter()
    losses, norms = zip(*(step(batch) for _ in range(CHECK_STEPS)))
    diff, reason = expected.check("train", {"loss": np.array(losses), "grad_norm": np.array(norms)}, want,
                                  settings["tolerance"])
    if _refused(outcome, diff, reason, "max_rel_diff"):
        return
    seconds(lambda: step(batch), settings["warmup"])
    outcome.scalars["warmup_s"] = time.perf_counter() - started
    outcome.measurements["tokens_per_s"] = [inputs.x.size / t for t in seconds(lambda: step(batch),
                                                                                settings["repeats"])]


def _generate(engine: Engine, settings: Mapping[str, Any], inputs: Inputs, want: Mapping[str, np.ndarray],
              outcome: Outcome) -> None:
    """Check prefill logits and greedy tokens at both batch sizes, then time generations."""
    decoder, new = engine.decoder(), settings["new_tokens"]
    prompts = expected.prompts(inputs)
    started = time.perf_counter()
    got = {}
    for name, prompt in prompts.items():
        run = greedy(decoder, prompt, new)
        got[f"{name}.logits"], got[f"{name}.tokens"] = run.first_logits, run.tokens
    exact = expected.exact_tokens(settings["dtype"], bool(settings.get("tf32")))
    diff, reason = expected.check("generate", got, want, settings["tolerance"], exact)
    if _refused(outcome, diff, reason):
        return
    for _ in range(settings["warmup"]):
        for prompt in prompts.values():
            greedy(decoder, prompt, new)
    outcome.scalars["warmup_s"] = time.perf_counter() - started
    m: dict[str, list[float]] = {"tokens_per_s_b1": [], "tokens_per_s_batch": [], "ttft_s": [],
                                 "token_latency_s": []}
    for _ in range(settings["repeats"]):
        one, batch = greedy(decoder, prompts["b1"], new), greedy(decoder, prompts["batch"], new)
        m["tokens_per_s_b1"].append(new / one.total_s)
        m["tokens_per_s_batch"].append(batch.tokens.size / batch.total_s)
        m["ttft_s"].append(one.ttft_s)
        m["token_latency_s"].extend(one.step_s)
    outcome.measurements.update({k: v for k, v in m.items() if v})


def run(engine: Engine, workload: str, settings: Mapping[str, Any]) -> Outcome:
    """Build, check and time one case on an open engine (exceptions propagate: the worker records them)."""
    outcome = Outcome()
    path = settings.get("expected")
    if not path or not Path(path).is_file():
        return Outcome("failed", f"no PyTorch reference outputs to check against ({path or 'none computed'}); "
                                 "the reference needs torch: pip install 'llmdual[torch]'")
    want = expected.load(path)
    reset_peak_rss()
    engine.reset_peaks()
    try:
        outcome.scalars.update(engine.prepare(settings, TASKS[workload], workload == "generate"))
        inputs = Inputs.of(settings)
        if workload == "train":
            _train(engine, settings, inputs, want, outcome)
        elif workload == "generate":
            _generate(engine, settings, inputs, want, outcome)
        else:
            _infer(engine, settings, inputs, want, outcome, workload)
        outcome.scalars["tolerance"] = settings["tolerance"]
        outcome.scalars["peak_rss_mb"] = peak_rss_mb()
        device = engine.peak_device_mb()
        if device is not None:
            outcome.scalars["peak_device_mb"] = device
    finally:
        engine.release()
    return outcome


PROBE_SIZE = {"cpu": 1024, "cuda": 8192}  # square matmul side: ~2 GFLOP on a CPU, ~1 TFLOP on a GPU


def probe(matmul: Callable[[], Any], n: int, repeats: int = 10) -> float:
    """Peak FLOP/s of a synchronised ``n x n`` matmul: the fastest of ``repeats`` calls after two warm-ups."""
    from llmdual.bench.flops import matmul_flop_rate

    seconds(matmul, 2)
    return matmul_flop_rate(n, min(seconds(matmul, repeats)))
