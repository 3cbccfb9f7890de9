"""The framework comparison behind ``benchmarks/compare.py``: options -> reference outputs -> cases -> results.

One call of :func:`run` does the whole job: resolve the device and thread count, compute the PyTorch reference
outputs of every measurement point (its own process, :mod:`llmdual.bench.expected`), run every engine x
workload x point in fresh worker processes (one per engine and round, engines in a seeded random order,
each record appended to ``runs.jsonl`` as it lands), then write ``results.json`` (schema
``llmdual.bench/1``), ``report.md`` and the PNG charts into the output folder and print a table per workload.
A new run in the same folder replaces the previous run's files.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from llmdual.bench import env, expected, report, runner
from llmdual.bench.engines import not_applicable
from llmdual.bench.results import ENGINES, WORKLOADS, append_jsonl, build_document, write_json
from llmdual.bench.runner import CaseSpec
from llmdual.config import PRESETS, Config

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DEVICES = ("auto", "cpu", "cuda")
# Opt-in (``all`` or naming them): ``torch-compile``, whose compilation alone takes about a minute on 2 CPU cores,
# and ``classify``, which needs its own compilation and ONNX export per engine; the default run must finish on 2
# cores in under 5 minutes, start-ups and exports included.
DEFAULT_ENGINES = tuple(e for e in ENGINES if e != "torch-compile")
DEFAULT_WORKLOADS = ("train", "infer", "generate")


class NoDevice(RuntimeError):
    """``--device cuda`` on a machine without a CUDA GPU."""


@dataclass(frozen=True)
class Options:
    """Everything a comparison run is asked to do (the CLI's flags, with the defaults that finish on 2 CPU
    cores in well under 5 minutes, framework start-ups, compilation and ONNX exports included)."""

    preset: str = "small"
    engines: tuple[str, ...] = DEFAULT_ENGINES
    workloads: tuple[str, ...] = DEFAULT_WORKLOADS
    batch_sizes: tuple[int, ...] = (2,)
    seq_lens: tuple[int, ...] = (64,)
    new_tokens: int = 8
    sweep: bool = False
    precision: str = "fp32"
    tf32: bool = False
    device: str = "auto"
    warmup: int = 1
    repeats: int = 5
    rounds: int = 1
    threads: int | None = None
    priority: str = "training"
    out: str = "bench-results"
    seed: int = 0
    timeout_s: float = 600.0
    extra: dict[str, Any] = field(default_factory=dict)  # recorded as flags, e.g. the command line

    def __post_init__(self) -> None:
        problems = []
        if self.preset not in PRESETS:
            problems.append(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        problems += [f"unknown engine {e!r}; choose from {', '.join(ENGINES)}" for e in self.engines
                     if e not in ENGINES]
        problems += [f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}" for w in self.workloads
                     if w not in WORKLOADS]
        if self.precision not in DTYPES:
            problems.append(f"precision must be one of {sorted(DTYPES)}, got {self.precision!r}")
        if self.device not in DEVICES:
            problems.append(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.priority not in report.PRIORITIES:
            problems.append(f"priority must be one of {sorted(report.PRIORITIES)}, got {self.priority!r}")
        if not self.sweep and (len(self.batch_sizes) > 1 or len(self.seq_lens) > 1):
            problems.append("several batch sizes or sequence lengths need --sweep")
        for name in ("new_tokens", "repeats", "rounds"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0 or (self.threads is not None and self.threads < 1):
            problems.append("warmup must be >= 0 and threads >= 1")
        if not self.engines or not self.workloads:
            problems.append("choose at least one engine and one workload")
        longest = PRESETS[self.preset]["max_seq_len"] if self.preset in PRESETS else 0
        if any(b < 1 for b in self.batch_sizes) or any(not 1 <= t <= longest for t in self.seq_lens):
            problems.append(f"batch sizes must be >= 1 and sequence lengths in [1, {longest}] (max_seq_len)")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def config(self) -> Config:
        return Config.preset(self.preset)

    def points(self) -> list[tuple[int, int]]:
        """(batch size, sequence length) of every measurement point: one, or the sweep's grid."""
        batches, lengths = self.batch_sizes, self.seq_lens
        if self.sweep and len(batches) == 1 and len(lengths) == 1:  # a default grid around the single point
            B, T = batches[0], lengths[0]
            batches = tuple(sorted({1, B, 2 * B}))
            lengths = tuple(sorted({max(1, T // 2), T}))
        return list(itertools.product(batches, lengths))


def resolve_device(device: str) -> str:
    """``cpu`` or ``cuda``; ``auto`` is ``cuda`` where ``nvidia-smi`` lists a GPU. ``NoDevice`` for ``cuda`` on
    a machine without one."""
    gpus = env.gpus()
    if device == "cuda" and not gpus:
        raise NoDevice("--device cuda: no CUDA device found (nvidia-smi lists no GPU); use --device cpu or auto")
    return "cuda" if device == "cuda" or (device == "auto" and gpus) else "cpu"


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def case_settings(options: Options, device: str, threads: int, batch_size: int, seq_len: int) -> dict[str, Any]:
    """The settings of every case at one point (see the runner's docstring for each key)."""
    dtype = DTYPES[options.precision]
    tf32 = options.tf32 and device == "cuda"
    return {"config": options.config.to_dict(), "preset": options.preset, "batch_size": batch_size,
            "seq_len": seq_len, "new_tokens": options.new_tokens, "warmup": options.warmup,
            "repeats": options.repeats, "seed": options.seed, "device": device, "dtype": dtype, "tf32": tf32,
            "threads": threads, "tolerance": expected.tolerance(dtype, tf32)}


def reference(settings: dict[str, Any], workloads: Sequence[str], folder: Path, timeout_s: float
              ) -> tuple[str | None, str | None]:
    """Compute the point's PyTorch reference outputs in a fresh process: (path, None) or (None, why not)."""
    if runner.skip_reason("torch-eager"):
        return None, f"the PyTorch reference cannot run: {runner.skip_reason('torch-eager')}"
    key = json.dumps([settings, sorted(workloads)], sort_keys=True)
    path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "llmdual.bench.expected", "--settings", json.dumps(settings),
               "--workloads", ",".join(workloads), "--out", str(path)]
    environment = runner.worker_env(CaseSpec("torch-eager", "infer", {**settings, "device": "cpu"}))
    try:
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"the PyTorch reference timed out after {timeout_s:g} s"
    if done.returncode != 0:
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "")
        return None, f"the PyTorch reference failed (exit {done.returncode}): {last[:300]}"
    return str(path.resolve()), None


def _skipped(spec: CaseSpec, status: str, reason: str) -> dict[str, Any]:
    return {"engine": spec.engine, "workload": spec.workload, "settings": spec.settings, "round": 0,
            "status": status, "reason": reason, "measurements": {}, "scalars": {}}


def plan_cases(options: Options, device: str, threads: int, out: Path, console: Console
               ) -> tuple[list[CaseSpec], list[dict[str, Any]]]:
    """The cases to run, and the records of those decided without running (not applicable, no reference)."""
    specs, decided = [], []
    for batch_size, seq_len in options.points():
        settings = case_settings(options, device, threads, batch_size, seq_len)
        todo = []
        for spec in (CaseSpec(e, w, settings) for e in options.engines for w in options.workloads):
            why = runner.skip_reason(spec.engine) or not_applicable(spec.engine, spec.workload, settings)
            if why:
                decided.append(_skipped(spec, "skipped", why))
            else:
                todo.append(spec)
        if not todo:
            continue
        workloads = sorted({s.workload for s in todo}, key=WORKLOADS.index)
        with console.status(f"PyTorch reference outputs (batch {batch_size}, sequence {seq_len})"):
            path, why = reference(settings, workloads, out / "expected", options.timeout_s)
        if why:
            decided += [_skipped(s, "failed", f"not checked, so not timed: {why}") for s in todo]
            continue
        specs += [CaseSpec(s.engine, s.workload, {**settings, "expected": path}) for s in todo]
    return specs, decided


def session_peak(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The machine's peak FLOP/s for MFU: the best matmul probe of this run's worker processes (each probes with
    its own framework), so every engine is judged against one figure; empty if none probed."""
    probes = [(r["scalars"]["probe_flops"], r["engine"]) for r in records
              if r.get("status") == "ok" and r.get("scalars", {}).get("probe_flops")]
    if not probes:
        return {}
    best, engine = max(probes)
    return {"probe_flops": best, "probe_source": f"best matmul probe of the run ({engine})"}


def run(options: Options, console: Console | None = None,
        command: runner.CommandBuilder = runner.worker_command) -> tuple[dict[str, Any], list[Path]]:
    """Run the comparison; returns the results document and the files written (JSON, Markdown, PNGs).
    ``command`` builds each worker's command line (the runner's hook; tests inject faulty workers with it)."""
    console = console or Console(width=None if sys.stdout.isatty() else 200)  # logs: no folded table cells
    device = resolve_device(options.device)
    threads = options.threads or usable_cores()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "runs.jsonl"
    jsonl.unlink(missing_ok=True)
    specs, decided = plan_cases(options, device, threads, out, console)
    for record in decided:
        append_jsonl(jsonl, record)
    records = runner.run_cases(specs, jsonl, rounds=options.rounds, seed=options.seed, timeout_s=options.timeout_s,
                               command=command, console=console, per_engine=True)
    settings = {**{k: v for k, v in asdict(options).items() if k != "extra"}, "device": device,
                "threads": threads, "dtype": DTYPES[options.precision],
                "tolerance": expected.tolerance(DTYPES[options.precision], options.tf32 and device == "cuda"),
                "points": options.points(), "config": options.config.to_dict(), **session_peak(records)}
    worker = runner.worker_env(CaseSpec("torch-eager", "infer", {"threads": threads, "device": device}), base={})
    environment = env.capture(threads, flags={**options.extra, "worker_env": worker})
    doc = build_document(environment, settings, decided + records)
    files = [write_json(out / "results.json", doc), *report.write_report(doc, out, options.priority)]
    report.print_tables(doc, console)
    return doc, files
