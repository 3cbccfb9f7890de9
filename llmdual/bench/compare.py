"""One benchmark run: options -> expected outputs -> cases in fresh workers -> ``results.json``, ``report.md``,
charts and a table per workload. ``benchmarks/compare.py`` and ``benchmarks/perf_bar.py`` are its command lines."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmdual.bench import charts, env, expected, report, runner, verdict
from llmdual.bench.engines import ENGINES, LLMDUAL_ENGINES, not_applicable, skip_reason
from llmdual.bench.results import WORKLOADS, Record, append_jsonl, build_document, write_json
from llmdual.bench.runner import CaseSpec
from llmdual.core.config import PRESETS, Config
from llmdual.parallel.launch import usable_cores

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DEVICES = ("auto", "cpu", "cuda")
# The default run measures real work: every llmdual engine, compiled ones included, at 8 x 256 tokens per step
# and 64 new tokens after a 64-token prompt, and still finishes on 2 CPU cores in about 5 minutes. The reference
# implementations (perf_bar.py) and classify/kv are opt-in.
DEFAULT_ENGINES = LLMDUAL_ENGINES
DEFAULT_WORKLOADS = ("train", "infer", "generate")
DEFAULT_PROMPT_LEN = 64  # the command line's prompt (at most the sequence length); Options' None means the latter
# ``--quick``: the small shapes that measure per-op overhead more than work, without compilation (about 2 minutes).
QUICK: dict[str, Any] = {"batch_sizes": (2,), "seq_lens": (64,), "prompt_len": None, "new_tokens": 8,
                         "engines": tuple(e for e in LLMDUAL_ENGINES if e != "torch-compile")}


class NoDevice(RuntimeError):
    """``--device cuda`` on a machine without a CUDA GPU."""


@dataclass(frozen=True)
class Options:
    """Everything a run is asked to do (the command lines' flags and their defaults)."""

    preset: str = "small"
    engines: tuple[str, ...] = DEFAULT_ENGINES
    workloads: tuple[str, ...] = DEFAULT_WORKLOADS
    batch_sizes: tuple[int, ...] = (8,)
    seq_lens: tuple[int, ...] = (256,)
    prompt_len: int | None = None  # generation prompt length; None: the sequence length
    new_tokens: int = 64
    sweep: bool = False
    precision: str = "fp32"
    tf32: bool = False
    device: str = "auto"
    warmup: int = 1
    repeats: int = 5
    budget_s: float | None = None  # timed seconds after which a case stops repeating (at least 3 repeats)
    rounds: int = 1
    threads: int | None = None
    priority: str = "training"
    out: str = "bench-results"
    seed: int = 0
    timeout_s: float = 600.0
    nanogpt: str | None = None  # a nanoGPT checkout (or its model.py) for the nanogpt reference
    charts: bool | None = None  # None: when matplotlib is installed
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
        if self.priority not in verdict.PRIORITIES:
            problems.append(f"priority must be one of {sorted(verdict.PRIORITIES)}, got {self.priority!r}")
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
        if self.prompt_len is not None and not 1 <= self.prompt_len <= min(self.seq_lens, default=0):
            problems.append(f"prompt_len must be in [1, {min(self.seq_lens, default=0)}] (the sequence length)")
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
            batches, lengths = tuple(sorted({1, B, 2 * B})), tuple(sorted({max(1, T // 2), T}))
        return list(itertools.product(batches, lengths))

    def settings(self, device: str, threads: int, batch_size: int, seq_len: int) -> dict[str, Any]:
        """The settings every case at one point gets (the worker reads them; the runner only threads, device)."""
        dtype, tf32 = DTYPES[self.precision], self.tf32 and device == "cuda"
        return {"config": self.config.to_dict(), "preset": self.preset, "batch_size": batch_size,
                "seq_len": seq_len, "prompt_len": self.prompt_len, "new_tokens": self.new_tokens,
                "warmup": self.warmup, "repeats": self.repeats, "budget_s": self.budget_s, "seed": self.seed,
                "device": device, "dtype": dtype, "tf32": tf32, "threads": threads,
                "tolerance": expected.tolerance(dtype, tf32),
                "nanogpt": None if self.nanogpt is None else str(Path(self.nanogpt).resolve())}


def resolve_device(device: str) -> str:
    """``cpu`` or ``cuda`` (``auto``: ``cuda`` where ``nvidia-smi`` lists a GPU); ``NoDevice`` for a missing GPU."""
    gpus = env.gpus()
    if device == "cuda" and not gpus:
        raise NoDevice("--device cuda: no CUDA device found (nvidia-smi lists no GPU); use --device cpu or auto")
    return "cuda" if device == "cuda" or (device == "auto" and gpus) else "cpu"


def plan_cases(options: Options, device: str, threads: int, out: Path, log: Callable[[str], None]
               ) -> tuple[list[CaseSpec], list[Record]]:
    """The cases to run, and the records of those decided without running (not applicable, no expected outputs)."""
    specs, decided = [], []
    for batch_size, seq_len in options.points():
        settings = options.settings(device, threads, batch_size, seq_len)
        todo = []
        for spec in (CaseSpec(e, w, settings) for e in options.engines for w in options.workloads):
            why = skip_reason(spec.engine, settings) or not_applicable(spec.engine, spec.workload, settings)
            if why:
                decided.append(spec.record("skipped", why))
            else:
                todo.append(spec)
        if not todo:
            continue
        workloads = sorted({s.workload for s in todo}, key=WORKLOADS.index)
        log(f"expected outputs (batch {batch_size}, sequence {seq_len}): {', '.join(workloads)}")
        why = skip_reason("torch-eager") and f"the expected outputs need PyTorch: {skip_reason('torch-eager')}"
        path = None
        if not why:
            environment = runner.worker_env(CaseSpec("torch-eager", "infer", {**settings, "device": "cpu"}))
            path, why = expected.compute_in_process(settings, workloads, out / "expected", options.timeout_s,
                                                    environment)
        if why:
            decided += [s.record("failed", f"not checked, so not timed: {why}") for s in todo]
            continue
        specs += [CaseSpec(s.engine, s.workload, {**settings, "expected": path}) for s in todo]
    return specs, decided


def session_peak(records: list[Record]) -> dict[str, Any]:
    """The run's peak FLOP/s for MFU: the best matmul probe of its workers (each probes with its own framework),
    so every engine is judged against one figure; empty if none probed."""
    probes = [(r.scalars["probe_flops"], r.engine) for r in records
              if r.status == "ok" and r.scalars.get("probe_flops")]
    if not probes:
        return {}
    best, engine = max(probes)
    return {"probe_flops": best, "probe_source": f"best matmul probe of the run ({engine})"}


def run(options: Options, log: Callable[[str], None] = print,
        command: runner.CommandBuilder = runner.worker_command) -> tuple[dict[str, Any], list[Path]]:
    """Run the benchmark; returns the results document and the files written. ``command`` builds each worker's
    command line (tests inject faulty workers with it)."""
    if options.charts:
        charts.require()  # asked for charts without matplotlib: say so before anything runs
    device = resolve_device(options.device)
    threads = options.threads or usable_cores()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "runs.jsonl"
    jsonl.unlink(missing_ok=True)
    specs, decided = plan_cases(options, device, threads, out, log)
    for record in decided:
        append_jsonl(jsonl, record)
    records = runner.run_cases(specs, jsonl, rounds=options.rounds, seed=options.seed, timeout_s=options.timeout_s,
                               command=command, log=log)
    dtype, tf32 = DTYPES[options.precision], options.tf32 and device == "cuda"
    settings = {**{k: v for k, v in asdict(options).items() if k != "extra"}, "device": device, "threads": threads,
                "dtype": dtype, "tolerance": expected.tolerance(dtype, tf32), "points": options.points(),
                "config": options.config.to_dict(), **session_peak(records)}
    worker = runner.worker_env(CaseSpec("torch-eager", "infer", {"threads": threads, "device": device}), base={})
    doc = build_document(env.capture(threads, flags={**options.extra, "worker_env": worker}), settings,
                         decided + records)
    pictures = []
    if options.charts or (options.charts is None and charts.available()):
        pictures = charts.write_charts(doc, out)
    elif options.charts is None:
        log("charts skipped: matplotlib is not installed (pip install 'llmdual[report]')")
    files = [write_json(out / "results.json", doc), report.write_report(doc, out, options.priority, pictures),
             *pictures]
    report.print_tables(doc, None if log is print else log)
    return doc, files
