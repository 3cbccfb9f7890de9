"""The results document (schema ``llmdual.bench/1``): vocabulary, assembly from run records, validation, files.

A run of the benchmark produces one *run record* per worker process (one JSONL line each, appended as it
finishes). :func:`build_document` merges the records of the same case (engine, workload, settings) across
rounds into *case records*, adds statistics, FLOP/s and a summary that ranks the engines, giving::

    {"schema": "llmdual.bench/1", "env": {...}, "settings": {...}, "cases": [...], "summary": {...}}

A case record holds ``engine``, ``framework``, ``workload``, ``settings``, ``status`` (see ``STATUSES``),
``reason`` (text, required unless ``ok``), ``measurements`` (metric -> every raw value, all rounds),
``stats`` (metric -> :func:`llmdual.bench.stats.summarize`), ``scalars``, ``flops`` and ``runs``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmdual.bench import flops, stats
from llmdual.config import Config
from llmdual.files import atomic_write

SCHEMA = "llmdual.bench/1"
STATUSES = ("ok", "failed", "crashed", "timeout", "skipped", "mismatch")
WORKER_STATUSES = ("ok", "mismatch", "failed")
WORKLOADS = ("train", "infer", "generate", "classify")


@dataclass(frozen=True)
class Engine:
    """A way of running the model: the framework it counts for, what it imports, the Keras backend it needs."""

    framework: str
    modules: tuple[str, ...]
    keras_backend: str | None = None


# The one engine table: framework named in the recommendation, top-level modules needed, Keras backend.
ENGINES: dict[str, Engine] = {
    "torch-eager": Engine("PyTorch", ("torch",)),
    "torch-compile": Engine("PyTorch", ("torch",)),
    "keras-tensorflow": Engine("Keras/TensorFlow", ("keras", "tensorflow"), "tensorflow"),
    "keras-tensorflow-xla": Engine("Keras/TensorFlow", ("keras", "tensorflow"), "tensorflow"),
    "keras-jax": Engine("Keras/JAX", ("keras", "jax", "jaxlib"), "jax"),
    "keras-torch": Engine("Keras/PyTorch", ("keras", "torch"), "torch"),
    "ort-torch-export": Engine("ONNX Runtime", ("torch", "onnx", "onnxscript", "onnxruntime")),
    "ort-keras-export": Engine(
        "ONNX Runtime", ("keras", "tensorflow", "tf2onnx", "onnx", "onnxruntime"), "tensorflow"
    ),
}

# Top-level module -> the llmdual extra that installs it.
EXTRAS: dict[str, str] = {
    "torch": "torch", "keras": "keras", "tensorflow": "keras", "jax": "jax", "jaxlib": "jax",
    "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "tf2onnx": "onnx",
}


def framework_of(engine: str) -> str:
    """Framework an engine counts for in the recommendation (an unknown engine stands for itself)."""
    return ENGINES[engine].framework if engine in ENGINES else engine


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
    "token_latency_s": Metric("per-token latency", "s", False),
    "peak_rss_mb": Metric("peak RSS", "MB", False),
    "peak_device_mb": Metric("peak device memory", "MB", False),
}

# Metrics each workload's worker reports; the first is the headline figure ranked in tables and charts.
WORKLOAD_METRICS: dict[str, tuple[str, ...]] = {
    "train": ("tokens_per_s",),
    "infer": ("tokens_per_s",),
    "generate": ("tokens_per_s_b1", "tokens_per_s_batch", "ttft_s", "token_latency_s"),
    "classify": ("sequences_per_s",),
}

# Case settings that make a measurement point: cases agreeing on these are compared with each other.
POINT_KEYS = ("device", "dtype", "batch_size", "seq_len", "new_tokens")


def point_of(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that place a case on a comparison point (and on a sweep's axis)."""
    return {key: settings[key] for key in POINT_KEYS if key in settings}


def _merged_scalars(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Scalars over rounds: the maximum for ``peak_*``/``max_*``, the median for other numbers, else the first."""
    values: dict[str, list[Any]] = {}
    for run in runs:
        for key, value in run.get("scalars", {}).items():
            values.setdefault(key, []).append(value)
    merged = {}
    for key, seen in values.items():
        numbers = [v for v in seen if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) != len(seen):
            merged[key] = seen[0]
        elif key.startswith(("peak_", "max_")):
            merged[key] = max(numbers)
        else:
            merged[key] = stats.median(numbers)
    return merged


def _case(runs: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """Merge the run records of one case (same engine, workload, settings) into a case record."""
    first = runs[0]
    measured = [r for r in runs if r["status"] in ("ok", "mismatch")]
    measurements: dict[str, list[float]] = {}
    for run in measured:
        for metric, values in run.get("measurements", {}).items():
            measurements.setdefault(metric, []).extend(float(v) for v in values)
        rss = run.get("scalars", {}).get("peak_rss_mb") or run.get("child_peak_rss_mb")
        if rss is not None:
            measurements.setdefault("peak_rss_mb", []).append(float(rss))
    device = [r["scalars"]["peak_device_mb"] for r in measured if "peak_device_mb" in r.get("scalars", {})]
    if device and len(device) == len(measured):
        measurements["peak_device_mb"] = [float(v) for v in device]
    bad = [r for r in runs if r["status"] != "ok"]
    status, reason = ("ok", None) if not bad else (bad[0]["status"], bad[0]["reason"])
    if bad and len(runs) > 1:
        reason = f"{reason} (round {bad[0]['round']}; {len(runs) - len(bad)} of {len(runs)} rounds ok)"
    keep = ("round", "status", "reason", "returncode", "wall_s", "child_peak_rss_mb", "stderr_tail", "scalars")
    return {
        "engine": first["engine"],
        "framework": framework_of(first["engine"]),
        "workload": first["workload"],
        "settings": first["settings"],
        "status": status,
        "reason": reason,
        "measurements": measurements,
        "stats": {m: stats.summarize(v, seed=seed) for m, v in measurements.items() if v},
        "scalars": _merged_scalars(measured),
        "flops": None,
        "runs": [{k: r[k] for k in keep if k in r} for r in runs],
    }


def merge_runs(runs: Iterable[Mapping[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Case records from run records, in order of first appearance (rounds of a case merged)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if run.get("workload") not in WORKLOADS or run.get("status") not in STATUSES:
            raise ValueError(f"bad run record: workload {run.get('workload')!r}, status {run.get('status')!r}")
        key = json.dumps([run["engine"], run["workload"], run["settings"]], sort_keys=True)
        groups.setdefault(key, []).append(dict(run))
    return [_case(group, seed) for group in groups.values()]


def _flops(case: dict[str, Any], env: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """Achieved FLOP/s of an ok case and its utilisation of the best-known peak (given, datasheet, probe), and
    of the matmul probe's peak on its own (``probe_*``): the run's best probe when ``settings["probe_flops"]``
    holds it, else the case's own."""
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
    peak, source = None, None
    gpus = env.get("gpus") or []
    if settings.get("peak_flops"):
        peak, source = float(settings["peak_flops"]), "given"
    elif case["settings"].get("device") == "cuda" and gpus:
        precision = flops.precision_of(case["settings"].get("dtype", "float32"), bool(case["settings"].get("tf32")))
        peak = flops.datasheet_peak(gpus[0]["name"], precision)
        source = f"datasheet {flops.gpu_model(gpus[0]['name'])} {precision}" if peak else None
    if peak is None and probe is not None:
        peak, source = probe, probe_source
    return {
        "per_unit": per_unit,
        "achieved": achieved,
        "peak": peak,
        "peak_source": source,
        "utilisation": None if peak is None else flops.utilisation(achieved, peak),
        "probe_peak": probe,
        "probe_utilisation": None if probe is None else flops.utilisation(achieved, probe),
    }


def _group(workload: str, point: dict[str, Any], metric: str, cases: list[tuple[int, dict]], seed: int) -> dict:
    """Rank the ok cases of one point on one metric; each entry carries its ratio to the best with a CI."""
    higher = METRICS[metric].higher_is_better if metric in METRICS else True
    ranked = sorted(cases, key=lambda ic: ic[1]["stats"][metric]["median"], reverse=higher)
    best = ranked[0][1]["measurements"][metric]
    entries = []
    for index, case in ranked:
        mine = case["measurements"][metric]
        ratio = stats.ratio_of_medians(*((mine, best) if higher else (best, mine)), seed=seed)
        entries.append({
            "case": index,
            "engine": case["engine"],
            "framework": case["framework"],
            "n": len(mine),
            "median": case["stats"][metric]["median"],
            "relative": ratio.ratio,
            "relative_ci": [ratio.low, ratio.high],
            "within_noise": ratio.within_noise,
        })
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
        for metric in (*WORKLOAD_METRICS[workload], memory):
            having = [(i, c) for i, c in members if metric in c["stats"]]
            if having:
                groups.append(_group(workload, point, metric, having, seed))
    return {"counts": counts, "groups": groups}


def build_document(env: Mapping[str, Any], settings: Mapping[str, Any], runs: Iterable[Mapping[str, Any]]) -> dict:
    """The full, validated results document from run records (e.g. the runner's, or a JSONL file's)."""
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validate_case(case: Any, where: str) -> None:
    _require(isinstance(case, dict), where, f"must be an object, got {type(case).__name__}")
    for key in ("engine", "workload", "status", "reason", "settings", "measurements", "stats", "scalars"):
        _require(key in case, where, f"missing key {key!r}")
    _require(isinstance(case["engine"], str) and case["engine"] != "", f"{where}.engine", "must be a non-empty string")
    _require(case["workload"] in WORKLOADS, f"{where}.workload", f"{case['workload']!r} is not one of {WORKLOADS}")
    _require(case["status"] in STATUSES, f"{where}.status", f"{case['status']!r} is not one of {STATUSES}")
    reason = case["reason"]
    _require(reason is None or isinstance(reason, str), f"{where}.reason", "must be a string or null")
    if case["status"] != "ok":
        _require(bool(reason), f"{where}.reason", f"a {case['status']!r} case must say why")
    for key in ("settings", "measurements", "stats", "scalars"):
        _require(isinstance(case[key], dict), f"{where}.{key}", f"must be an object, got {type(case[key]).__name__}")
    for metric, values in case["measurements"].items():
        _require(isinstance(values, list) and all(_is_number(v) for v in values),
                 f"{where}.measurements.{metric}", "must be a list of finite numbers")
    for metric, summary in case["stats"].items():
        _require(isinstance(summary, dict) and _is_number(summary.get("median")),
                 f"{where}.stats.{metric}", "must be an object with a numeric 'median'")


def validate(doc: Any) -> dict[str, Any]:
    """Return ``doc`` if it follows schema ``llmdual.bench/1``, else raise ``ValueError`` naming the problem."""
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


def write_json(path: str | Path, doc: dict[str, Any]) -> Path:
    """Validate and write the document atomically (temporary name, then rename), creating the folder."""
    text = json.dumps(validate(doc), indent=2, allow_nan=False) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_json(path: str | Path) -> dict[str, Any]:
    """A results document from disk, validated."""
    return validate(json.loads(Path(path).read_text()))


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one record as a JSON line and flush it to disk, so an interrupted run keeps what finished."""
    line = json.dumps(record, allow_nan=False) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(line)
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
