"""The typed run record and the results document (schema ``llmdual.bench/2``): assembly, validation, files.

A run produces one :class:`Record` per case and round (a JSONL line each, appended as it lands);
:func:`build_document` merges the rounds of each case into a case record with statistics, FLOP/s and a
summary ranking the engines: ``{"schema", "env", "settings", "cases", "summary"}``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from llmdual.bench import flops
from llmdual.bench.engines.table import framework_of
from llmdual.bench.report import stats
from llmdual.core.config import Config
from llmdual.core.io import atomic_write

SCHEMA = "llmdual.bench/2"
STATUSES = ("ok", "failed", "crashed", "timeout", "skipped", "mismatch")
WORKER_STATUSES = ("ok", "mismatch", "failed")  # what a worker may report; the runner adds the others
WORKLOADS = ("train", "infer", "generate", "classify", "kv")


@dataclass(frozen=True)
class Metric:
    """How to show and rank one measured quantity."""

    label: str
    unit: str
    higher_is_better: bool


METRICS: dict[str, Metric] = {
    "tokens_per_s": Metric("throughput", "tok/s", True),
    "sequences_per_s": Metric("throughput", "seq/s", True),
    "tokens_per_s_b1": Metric("tokens/s, batch 1", "tok/s", True),
    "tokens_per_s_batch": Metric("tokens/s, batch", "tok/s", True),
    "ttft_s": Metric("time to first token", "s", False),
    "token_latency_s": Metric("streamed per-token latency", "s", False),
    "kv_cached_s": Metric("KV-cache step", "s", False),
    "kv_recompute_s": Metric("recompute step", "s", False),
    "peak_rss_mb": Metric("peak RSS", "MB", False),
    "peak_device_mb": Metric("peak device memory", "MB", False),
    "warmup_s": Metric("warm-up and compilation", "s", False),
}
# Metrics each workload reports; the first is the headline figure ranked in tables and charts.
WORKLOAD_METRICS: dict[str, tuple[str, ...]] = {
    "train": ("tokens_per_s",),
    "infer": ("tokens_per_s",),
    "generate": ("tokens_per_s_b1", "tokens_per_s_batch", "ttft_s", "token_latency_s"),
    "classify": ("sequences_per_s",),
    "kv": ("kv_cached_s", "kv_recompute_s"),
}
# Case settings that make a measurement point: cases agreeing on these are compared with each other.
POINT_KEYS = ("device", "dtype", "batch_size", "seq_len", "new_tokens")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Record:
    """One case run once: what the worker measured (status, reason, measurements, scalars) and what the runner
    saw of its process (round, returncode, wall_s, child_peak_rss_mb, stderr_tail)."""

    engine: str
    workload: str
    settings: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    reason: str | None = None  # required unless status is "ok"
    measurements: dict[str, list[float]] = field(default_factory=dict)  # metric -> one value per timed repeat
    scalars: dict[str, Any] = field(default_factory=dict)  # build_s, warmup_s, max_abs_diff, peak_rss_mb, ...
    round: int = 0
    returncode: int | None = None
    wall_s: float | None = None
    child_peak_rss_mb: float | None = None
    stderr_tail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Record:
        """A record from JSON data, checked field by field; ``ValueError`` naming what is wrong."""
        _check(isinstance(data, Mapping), f"a record must be an object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        _check(not unknown, f"unknown record fields {sorted(unknown)}")
        _check(isinstance(data.get("engine"), str) and isinstance(data.get("workload"), str),
               "engine and workload must be strings")
        record = cls(**data)
        _check(record.status in STATUSES, f"status {record.status!r} is not one of {STATUSES}")
        _check(record.reason is None or isinstance(record.reason, str), "reason must be a string or null")
        _check(record.status == "ok" or bool(record.reason), f"a {record.status!r} result must give a reason")
        _check(isinstance(record.measurements, dict) and isinstance(record.scalars, dict),
               "measurements and scalars must be objects")
        for metric, values in record.measurements.items():
            _check(isinstance(values, list) and all(_finite(v) for v in values),
                   f"measurements.{metric} must be a list of finite numbers")
        for name, value in record.scalars.items():
            _check(_finite(value) or value is None or isinstance(value, (str, bool)),
                   f"scalars.{name} must be a finite number, string, bool or null, got {value!r}")
        return record


def _check(condition: bool, problem: str) -> None:
    if not condition:
        raise ValueError(problem)


def point_of(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that place a case on a comparison point (and on a sweep's axis)."""
    return {key: settings[key] for key in POINT_KEYS if key in settings}


def _merged_scalars(runs: list[Record]) -> dict[str, Any]:
    """Scalars over rounds: the maximum for ``peak_*``/``max_*``, the median for other numbers, else the first."""
    values: dict[str, list[Any]] = {}
    for run in runs:
        for key, value in run.scalars.items():
            values.setdefault(key, []).append(value)
    merged = {}
    for key, seen in values.items():
        numbers = [v for v in seen if _finite(v)]
        if len(numbers) != len(seen):
            merged[key] = seen[0]
        else:
            merged[key] = max(numbers) if key.startswith(("peak_", "max_")) else stats.median(numbers)
    return merged


def _case(runs: list[Record], seed: int) -> dict[str, Any]:
    """Merge the records of one case (same engine, workload, settings) into a case record."""
    measured = [r for r in runs if r.status in ("ok", "mismatch")]
    measurements: dict[str, list[float]] = {}
    for run in measured:
        for metric, values in run.measurements.items():
            measurements.setdefault(metric, []).extend(float(v) for v in values)
        rss = run.scalars.get("peak_rss_mb") or run.child_peak_rss_mb
        if rss is not None:
            measurements.setdefault("peak_rss_mb", []).append(float(rss))
        if _finite(run.scalars.get("warmup_s")):
            measurements.setdefault("warmup_s", []).append(float(run.scalars["warmup_s"]))
    device = [r.scalars["peak_device_mb"] for r in measured if "peak_device_mb" in r.scalars]
    if device and len(device) == len(measured):
        measurements["peak_device_mb"] = [float(v) for v in device]
    bad = [r for r in runs if r.status != "ok"]
    status, reason = ("ok", None) if not bad else (bad[0].status, bad[0].reason)
    if bad and len(runs) > 1:
        reason = f"{reason} (round {bad[0].round}; {len(runs) - len(bad)} of {len(runs)} rounds ok)"
    first = runs[0]
    return {
        "engine": first.engine, "framework": framework_of(first.engine), "workload": first.workload,
        "settings": first.settings, "status": status, "reason": reason, "measurements": measurements,
        "stats": {m: stats.summarize(v, seed=seed) for m, v in measurements.items() if v},
        "scalars": _merged_scalars(measured), "flops": None,
        "runs": [{k: v for k, v in r.to_dict().items() if k not in ("engine", "workload", "settings")} for r in runs],
    }


def merge_runs(runs: Iterable[Record | Mapping[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Case records from run records, in order of first appearance (rounds of a case merged)."""
    groups: dict[str, list[Record]] = {}
    for run in runs:
        run = run if isinstance(run, Record) else Record.from_dict(run)
        if run.workload not in WORKLOADS:
            raise ValueError(f"bad run record: workload {run.workload!r} is not one of {WORKLOADS}")
        key = json.dumps([run.engine, run.workload, run.settings], sort_keys=True)
        groups.setdefault(key, []).append(run)
    return [_case(group, seed) for group in groups.values()]


def _flops(case: dict[str, Any], env: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """Achieved FLOP/s of an ok case and its utilisation of the best-known peak (given, datasheet, probe), and of
    the matmul probe's peak on its own (``probe_*``): the run's best probe if the settings hold it, else the case's."""
    config, seq_len = case["settings"].get("config"), case["settings"].get("seq_len")
    if case["status"] != "ok" or config is None or seq_len is None:
        return None
    per_unit = flops.flops_per_unit(Config.from_dict(config), case["workload"], seq_len)
    metric = WORKLOAD_METRICS[case["workload"]][0]
    if per_unit is None or metric not in case["stats"]:
        return None
    achieved = per_unit * case["stats"][metric]["median"]
    probe, probe_source = None, None
    if settings.get("probe_flops"):
        probe, probe_source = float(settings["probe_flops"]), str(settings.get("probe_source", "matmul probe"))
    elif case["scalars"].get("probe_flops"):
        probe, probe_source = float(case["scalars"]["probe_flops"]), "matmul probe"
    peak, source, gpus = None, None, env.get("gpus") or []
    if settings.get("peak_flops"):
        peak, source = float(settings["peak_flops"]), "given"
    elif case["settings"].get("device") == "cuda" and gpus:
        precision = flops.precision_of(case["settings"].get("dtype", "float32"), bool(case["settings"].get("tf32")))
        peak = flops.datasheet_peak(gpus[0]["name"], precision)
        source = f"datasheet {flops.gpu_model(gpus[0]['name'])} {precision}" if peak else None
    if peak is None and probe is not None:
        peak, source = probe, probe_source
    return {"per_unit": per_unit, "achieved": achieved, "peak": peak, "peak_source": source,
            "utilisation": None if peak is None else flops.utilisation(achieved, peak), "probe_peak": probe,
            "probe_utilisation": None if probe is None else flops.utilisation(achieved, probe)}


def _group(workload: str, point: dict[str, Any], metric: str, cases: list[tuple[int, dict]], seed: int) -> dict:
    """Rank the ok cases of one point on one metric; each entry carries its ratio to the best with a CI."""
    higher = METRICS[metric].higher_is_better if metric in METRICS else True
    ranked = sorted(cases, key=lambda ic: ic[1]["stats"][metric]["median"], reverse=higher)
    best = ranked[0][1]["measurements"][metric]
    entries = []
    for index, case in ranked:
        mine = case["measurements"][metric]
        ratio = stats.ratio_of_medians(*((mine, best) if higher else (best, mine)), seed=seed)
        entries.append({"case": index, "engine": case["engine"], "framework": case["framework"], "n": len(mine),
                        "median": case["stats"][metric]["median"], "relative": ratio.ratio,
                        "relative_ci": [ratio.low, ratio.high], "within_noise": ratio.within_noise})
    return {"workload": workload, "point": point, "metric": metric, "higher_is_better": higher, "entries": entries}


def summarize_cases(cases: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Status counts and, per workload, point and metric, the ranking of the ok engines (best first)."""
    counts = {status: sum(c["status"] == status for c in cases) for status in STATUSES}
    points: dict[str, tuple[str, dict[str, Any], list[tuple[int, dict]]]] = {}
    for index, case in enumerate(cases):
        if case["status"] == "ok":
            point = point_of(case["settings"])
            key = json.dumps([case["workload"], point], sort_keys=True)
            points.setdefault(key, (case["workload"], point, []))[2].append((index, case))
    groups = []
    for workload, point, members in sorted(points.values(), key=lambda g: WORKLOADS.index(g[0])):
        memory = "peak_device_mb" if all("peak_device_mb" in c["stats"] for _, c in members) else "peak_rss_mb"
        for metric in (*WORKLOAD_METRICS[workload], memory, "warmup_s"):
            having = [(i, c) for i, c in members if metric in c["stats"]]
            if having:
                groups.append(_group(workload, point, metric, having, seed))
    return {"counts": counts, "groups": groups}


def build_document(env: Mapping[str, Any], settings: Mapping[str, Any],
                   runs: Iterable[Record | Mapping[str, Any]]) -> dict[str, Any]:
    """The full, validated results document from run records (the runner's, or a JSONL file's)."""
    seed = int(settings.get("seed", 0))
    cases = merge_runs(runs, seed)
    for case in cases:
        case["flops"] = _flops(case, env, settings)
    doc = {"schema": SCHEMA, "env": dict(env), "settings": dict(settings), "cases": cases,
           "summary": summarize_cases(cases, seed)}
    return validate(doc)


def _require(condition: bool, where: str, problem: str) -> None:
    if not condition:
        raise ValueError(f"invalid results document: {where}: {problem}")


def _validate_case(case: Any, where: str) -> None:
    _require(isinstance(case, dict), where, f"must be an object, got {type(case).__name__}")
    for key in ("engine", "workload", "status", "reason", "settings", "measurements", "stats", "scalars", "runs"):
        _require(key in case, where, f"missing key {key!r}")
    _require(isinstance(case["engine"], str) and case["engine"] != "", f"{where}.engine", "must be a non-empty string")
    _require(case["workload"] in WORKLOADS, f"{where}.workload", f"{case['workload']!r} is not one of {WORKLOADS}")
    _require(case["status"] in STATUSES, f"{where}.status", f"{case['status']!r} is not one of {STATUSES}")
    _require(case["reason"] is None or isinstance(case["reason"], str), f"{where}.reason", "must be a string or null")
    if case["status"] != "ok":
        _require(bool(case["reason"]), f"{where}.reason", f"a {case['status']!r} case must say why")
    for key in ("settings", "measurements", "stats", "scalars"):
        _require(isinstance(case[key], dict), f"{where}.{key}", f"must be an object, got {type(case[key]).__name__}")
    for metric, values in case["measurements"].items():
        _require(isinstance(values, list) and all(_finite(v) for v in values),
                 f"{where}.measurements.{metric}", "must be a list of finite numbers")
    for metric, summary in case["stats"].items():
        _require(isinstance(summary, dict) and _finite(summary.get("median")),
                 f"{where}.stats.{metric}", "must be an object with a numeric 'median'")


def validate(doc: Any) -> dict[str, Any]:
    """Return ``doc`` if it follows schema ``llmdual.bench/2``, else raise ``ValueError`` naming the problem."""
    _require(isinstance(doc, dict), "document", f"must be an object, got {type(doc).__name__}")
    for key in ("schema", "env", "settings", "cases", "summary"):
        _require(key in doc, "document", f"missing key {key!r}")
    _require(doc["schema"] == SCHEMA, "schema", f"expected {SCHEMA!r}, got {doc['schema']!r}")
    for key in ("env", "settings", "summary"):
        _require(isinstance(doc[key], dict), key, f"must be an object, got {type(doc[key]).__name__}")
    _require(isinstance(doc["cases"], list), "cases", f"must be a list, got {type(doc['cases']).__name__}")
    for i, case in enumerate(doc["cases"]):
        _validate_case(case, f"cases[{i}]")
    _require(isinstance(doc["summary"].get("counts"), dict), "summary.counts", "must be an object")
    _require(isinstance(doc["summary"].get("groups"), list), "summary.groups", "must be a list")
    return doc


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` atomically (temporary name, then rename), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, doc: dict[str, Any]) -> Path:
    """Validate and write the document atomically."""
    return write_text(path, json.dumps(validate(doc), indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    """A results document from disk, validated."""
    return validate(json.loads(Path(path).read_text()))


def append_jsonl(path: str | Path, record: Record | Mapping[str, Any]) -> None:
    """Append one record as a JSON line and flush it to disk, so an interrupted run keeps what finished."""
    data = record.to_dict() if isinstance(record, Record) else record
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(data, allow_nan=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a torn last line (interrupted write) is dropped, a bad earlier one is an error."""
    lines = Path(path).read_text().split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):  # no newline after it: the write was cut short
                break
            raise ValueError(f"{path}: line {number} is not JSON: {error}") from None
    return records
