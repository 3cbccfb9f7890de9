"""A run's settings, typed: :class:`BenchSettings` (every option of the command line, each default stated once) and
the :class:`Case` it makes per engine, workload and point, which travels to the worker process as JSON and is read
back into the same dataclasses there. Framework-free."""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmdual.bench.engines.table import ENGINES, LLMDUAL_ENGINES, unsupported
from llmdual.bench.report.results import WORKLOADS, Record
from llmdual.bench.report.verdict import PRIORITIES
from llmdual.core.config import PRESETS, Config, check_fields

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --precision -> the compute dtype
DEVICES = ("auto", "cpu", "cuda")
# Largest accepted |difference| from the float32 expected outputs: absolute on logits, relative on training loss
# and gradient norm. float32 engines agree to ~2e-6 on the small preset (other summation orders), so 1e-4 still
# catches any real bug; bfloat16 keeps 8 mantissa bits (autocast lands ~2e-2 away); float16 and TF32 keep 10.
TOLERANCES = {"fp32": 1e-4, "tf32": 2e-2, "bf16": 1e-1, "fp16": 2e-2}


@dataclass(frozen=True)
class BenchSettings:
    """Everything a run is asked to do: the command line's options with their defaults. ``device`` and ``threads``
    are resolved (``resolved``) before cases are made, so a worker reads what actually runs."""

    preset: str = "small"
    engines: tuple[str, ...] = LLMDUAL_ENGINES
    workloads: tuple[str, ...] = ("train", "infer", "generate")
    batch_sizes: tuple[int, ...] = (8,)
    seq_lens: tuple[int, ...] = (256,)
    prompt_len: int | None = None  # generation prompt length; None: the sequence length
    new_tokens: int = 64
    sweep: bool = False
    precision: str = "fp32"
    tf32: bool = False  # TF32 matmuls for fp32, on CUDA only
    device: str = "auto"
    warmup: int = 1
    repeats: int = 5
    budget_s: float | None = None  # timed seconds after which a case stops repeating (at least 3 repeats)
    rounds: int = 1
    threads: int | None = None  # None: every usable core
    priority: str = "training"
    out: str = "bench-results"
    seed: int = 0
    timeout_s: float = 600.0
    nanogpt: str | None = None  # a nanoGPT checkout (or its model.py) for the nanogpt reference
    charts: bool | None = None  # None: when matplotlib is installed
    config_override: Config | None = None  # a library caller's own model; None: the preset's

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
        if self.priority not in PRIORITIES:
            problems.append(f"priority must be one of {sorted(PRIORITIES)}, got {self.priority!r}")
        if not self.sweep and (len(self.batch_sizes) > 1 or len(self.seq_lens) > 1):
            problems.append("several batch sizes or sequence lengths need --sweep")
        for name in ("new_tokens", "repeats", "rounds"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0 or (self.threads is not None and self.threads < 1):
            problems.append("warmup must be >= 0 and threads >= 1")
        if not self.engines or not self.workloads:
            problems.append("choose at least one engine and one workload")
        longest = self.config.max_seq_len if self.preset in PRESETS else 0
        if any(b < 1 for b in self.batch_sizes) or any(not 1 <= t <= longest for t in self.seq_lens):
            problems.append(f"batch sizes must be >= 1 and sequence lengths in [1, {longest}] (max_seq_len)")
        if self.prompt_len is not None and not 1 <= self.prompt_len <= min(self.seq_lens, default=0):
            problems.append(f"prompt_len must be in [1, {min(self.seq_lens, default=0)}] (the sequence length)")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def config(self) -> Config:
        """The model every engine builds."""
        return self.config_override or Config.preset(self.preset)

    @property
    def dtype(self) -> str:
        """The compute dtype of ``precision``."""
        return DTYPES[self.precision]

    @property
    def uses_tf32(self) -> bool:
        """Whether float32 matmuls run in TF32: asked for, and on CUDA."""
        return self.tf32 and self.device == "cuda"

    @property
    def tolerance(self) -> float:
        """The parity tolerance of the compute precision (float32 with TF32 matmuls counts as TF32)."""
        return TOLERANCES["tf32" if self.precision == "fp32" and self.uses_tf32 else self.precision]

    def points(self) -> list[tuple[int, int]]:
        """(batch size, sequence length) of every measurement point: one, or the sweep's grid."""
        batches, lengths = self.batch_sizes, self.seq_lens
        if self.sweep and len(batches) == 1 and len(lengths) == 1:  # a default grid around the single point
            B, T = batches[0], lengths[0]
            batches, lengths = tuple(sorted({1, B, 2 * B})), tuple(sorted({max(1, T // 2), T}))
        return list(itertools.product(batches, lengths))

    def resolved(self, device: str, threads: int) -> BenchSettings:
        """These settings as the workers run them: a concrete device and thread count, an absolute nanoGPT path."""
        nanogpt = None if self.nanogpt is None else str(Path(self.nanogpt).resolve())
        return dataclasses.replace(self, device=device, threads=threads, nanogpt=nanogpt)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists, the model config as a dict)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["config_override"] = None if self.config_override is None else self.config_override.to_dict()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchSettings:
        """The settings ``to_dict`` wrote, validated again; ``ValueError`` naming unknown fields."""
        check_fields(cls, data)
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        if values.get("config_override") is not None:
            values["config_override"] = Config.from_dict(values["config_override"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> BenchSettings:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class Case:
    """One benchmark case: an engine running a workload at one point (batch size x sequence length) of a run's
    settings, checked against the expected outputs saved at ``expected``."""

    engine: str
    workload: str
    settings: BenchSettings
    batch_size: int
    seq_len: int
    expected: str | None = None

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(f"unknown workload {self.workload!r}; choose one of {', '.join(WORKLOADS)}")

    @property
    def prompt_len(self) -> int:
        """The generation prompt's length at this point."""
        return self.settings.prompt_len or self.seq_len

    def not_applicable(self) -> str | None:
        """Why this case cannot run at all (so it is skipped), or None: what its engine never runs (the row's own
        reason, its backend's capabilities), then what its precision, device or lengths rule out."""
        why = unsupported(self.engine, self.workload)
        if why:
            return why
        s, row = self.settings, ENGINES.get(self.engine)
        if s.dtype == "float16" and s.device != "cuda":
            return "not applicable: float16 needs a CUDA GPU (use --precision bf16 on CPU)"
        if row is not None and not row.mixed_precision and s.dtype != "float32":
            return f"not applicable: {self.engine} runs float32 here, not {s.dtype}"
        limit = s.config.max_seq_len
        if self.workload == "generate" and self.prompt_len + s.new_tokens - 1 > limit:
            return (f"not applicable: a {self.prompt_len}-token prompt and {s.new_tokens} new tokens exceed "
                    f"max_seq_len {limit}")
        return None

    def to_json(self) -> str:
        """The ``--case-json`` argument handed to the worker."""
        return json.dumps({**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                           "settings": self.settings.to_dict()}, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Case:
        """The case ``to_json`` wrote; ``ValueError`` naming a missing or unknown field."""
        data = json.loads(text)
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - fields or fields - {"expected"} - set(data):
            raise ValueError(f"a case is a JSON object with the fields {sorted(fields)}, got {text[:200]}")
        return cls(**{**data, "settings": BenchSettings.from_dict(data["settings"])})

    def describe(self) -> dict[str, Any]:
        """The case's settings as the results document records them (what places it on a comparison point)."""
        s = self.settings
        return {"config": s.config.to_dict(), "preset": s.preset, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "prompt_len": s.prompt_len, "new_tokens": s.new_tokens, "warmup": s.warmup,
                "repeats": s.repeats, "budget_s": s.budget_s, "seed": s.seed, "device": s.device, "dtype": s.dtype,
                "tf32": s.uses_tf32, "threads": s.threads, "tolerance": s.tolerance, "nanogpt": s.nanogpt,
                **({"expected": self.expected} if self.expected else {})}

    def record(self, status: str, reason: str | None = None, round_index: int = 0, **process: Any) -> Record:
        """A record of this case (the worker's, or one the runner decided: skipped, crashed, timed out...)."""
        return Record(self.engine, self.workload, self.describe(), status, reason, round=round_index, **process)
