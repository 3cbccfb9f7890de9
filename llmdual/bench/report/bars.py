"""The performance bar: a view over a results document. Each bar is an llmdual engine's ratio to a reference
implementation's (or to itself, for the KV cache) measured in the same run: per round the ratio of medians, then
the geometric mean over rounds with a two-level bootstrap 95% interval, judged against a target."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmdual.bench.engines.table import ENGINES, LLMDUAL_ENGINES
from llmdual.bench.report import stats
from llmdual.bench.report.results import point_of
from llmdual.core.report import table

# engine (None: the fastest llmdual engine; ANY_REFERENCE: the fastest reference), workload, metric
Side = tuple[str | None, str, str]


@dataclass(frozen=True)
class Bar:
    """``median(numerator) / median(denominator)`` and the target it must reach (``None``: reported only)."""

    key: str
    label: str
    numerator: Side
    denominator: Side
    target: float | None


# Each llmdual engine against the best-known implementation on the same framework and backend.
PAIRS = (
    ("torch-eager", "hf-eager"),
    ("torch-compile", "hf-compile"),
    ("keras-tensorflow-xla", "kerashub-tensorflow-xla"),
    ("keras-jax", "kerashub-jax"),
    ("keras-torch", "kerashub-torch"),
)
HEADLINES = {"train": "tokens_per_s", "infer": "tokens_per_s", "generate": "tokens_per_s_b1"}
TARGET = 0.95  # at least 95% of the reference's throughput, or a measured reason why the reference does less work
ANY_REFERENCE = "reference*"

BARS = (
    *(Bar(f"{engine}-{workload}", f"llmdual {engine} {workload} vs {reference}", (engine, workload, metric),
          (reference, workload, metric), TARGET)
      for engine, reference in PAIRS for workload, metric in HEADLINES.items()),
    *(Bar(f"torch-eager-{workload}-nanogpt", f"llmdual torch-eager {workload} vs nanoGPT (with --nanogpt)",
          ("torch-eager", workload, "tokens_per_s"), ("nanogpt", workload, "tokens_per_s"), TARGET)
      for workload in ("train", "infer")),
    Bar("generate-best", "llmdual's fastest generation (batch 1) vs the fastest reference's",
        (None, "generate", "tokens_per_s_b1"), (ANY_REFERENCE, "generate", "tokens_per_s_b1"), 1.0),
    Bar("kv-torch", "KV cache vs recomputing, one step at full context, PyTorch",
        ("torch-eager", "kv", "kv_recompute_s"), ("torch-eager", "kv", "kv_cached_s"), 3.0),
    Bar("kv-keras", "KV cache vs recomputing, one step at full context, Keras/TF",
        ("keras-tensorflow", "kv", "kv_recompute_s"), ("keras-tensorflow", "kv", "kv_cached_s"), 3.0),
)
BAR_WORKLOADS = ("train", "infer", "generate", "kv")
REFERENCES = tuple(name for name, e in ENGINES.items() if e.reference)
# Every engine a bar names (nanoGPT needs --nanogpt and is skipped, naming it, without one).
DEFAULT_ENGINES = tuple(dict.fromkeys(
    [e for pair in PAIRS for e in pair] + ["nanogpt", "keras-tensorflow", "ort-torch-export", "ort-keras-export"]))
GENERATORS = tuple(e for e in DEFAULT_ENGINES if e in LLMDUAL_ENGINES)  # llmdual engines the best bar tries


def selection(only: Sequence[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(engines, workloads) to run: the defaults, or those named (engines, ``all``, or bar keys, which stand
    for the engines and workloads their ratio needs); ``ValueError`` for an unknown name."""
    if not only:
        return DEFAULT_ENGINES, BAR_WORKLOADS
    bars = {bar.key: bar for bar in BARS}
    engines: list[str] = []
    workloads: list[str] = []
    for name in only:
        if name == "all":
            engines += list(ENGINES)
        elif name in ENGINES:
            engines.append(name)
        elif name in bars:
            for engine, workload, _ in (bars[name].numerator, bars[name].denominator):
                workloads.append(workload)
                if engine is None:
                    engines += GENERATORS
                elif engine == ANY_REFERENCE:
                    engines += [e for e in DEFAULT_ENGINES if e in REFERENCES]
                else:
                    engines.append(engine)
        else:
            raise ValueError(f"unknown engine or bar {name!r}; engines: {', '.join(ENGINES)}; "
                             f"bars: {', '.join(bars)}")
    chosen = tuple(w for w in BAR_WORKLOADS if w in workloads)
    return tuple(dict.fromkeys(engines)), chosen or BAR_WORKLOADS


def rounds_of(case: dict[str, Any], metric: str) -> dict[int, list[float]]:
    """A case's values of ``metric`` per round in which it ran ok."""
    return {run["round"]: run["measurements"][metric] for run in case["runs"]
            if run["status"] == "ok" and run["measurements"].get(metric)}


def paired_ratio(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], confidence: float = 0.95,
                 n_boot: int = 2000, seed: int = 0) -> stats.Ratio:
    """Geometric mean over rounds of each round's ratio of medians, with a two-level bootstrap interval (rounds
    resampled, then the repeats within each); pairing by round keeps load changes between rounds out."""
    rng = np.random.default_rng(seed)
    logs, point = [], []
    for a, b in pairs:
        x, y = stats.sample(a), stats.sample(b)
        if np.any(x <= 0) or np.any(y <= 0):
            raise ValueError("paired ratios need positive values")
        point.append(np.log(np.median(x) / np.median(y)))
        boot_x = np.median(x[rng.integers(0, x.size, (n_boot, x.size))], axis=1)
        boot_y = np.median(y[rng.integers(0, y.size, (n_boot, y.size))], axis=1)
        logs.append(np.log(boot_x / boot_y))
    by_round = np.array(logs)  # (rounds, n_boot)
    draws = by_round[rng.integers(0, len(pairs), (n_boot, len(pairs))), np.arange(n_boot)[:, None]].mean(axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.exp(np.percentile(draws, [tail, 100.0 - tail]))
    return stats.Ratio(float(np.exp(np.mean(point))), float(low), float(high))


def verdict(ratio: stats.Ratio, target: float | None) -> str:
    """``pass``/``FAIL`` on the measured ratio, qualified when the interval straddles the target."""
    if target is None:
        return "within noise of 1" if ratio.within_noise else ("faster" if ratio.ratio > 1 else "slower")
    passed = "pass" if ratio.ratio >= target else "FAIL"
    return passed if ratio.low >= target or ratio.high < target else f"{passed} (interval straddles the target)"


def _candidates(side: Side) -> list[str]:
    engine = side[0]
    if engine is None:
        return list(LLMDUAL_ENGINES)
    return list(REFERENCES) if engine == ANY_REFERENCE else [engine]


def _resolve(side: Side, cases: dict[tuple[str, str], dict[str, Any]]) -> str | None:
    """The engine a side names; for ``None`` or ``ANY_REFERENCE`` the fastest candidate with the metric measured."""
    _, workload, metric = side
    have = [e for e in _candidates(side) if metric in cases.get((e, workload), {}).get("stats", {})]
    return max(have, key=lambda e: cases[e, workload]["stats"][metric]["median"], default=None)


def _why(side: Side, engine: str | None, cases: dict[tuple[str, str], dict[str, Any]]) -> str:
    """Why a side has no measurement: the reasons of the cases it could have used."""
    workload = side[1]
    names = [engine] if engine else _candidates(side)
    found = [f"{e} {workload}: {cases[e, workload]['reason'] or 'not measured'}"
             for e in names if (e, workload) in cases]
    return "; ".join(found) or f"{side[0] or 'no llmdual engine'} {workload}: not run"


def _evaluate_point(bar: Bar, cases: dict[tuple[str, str], dict[str, Any]], seed: int) -> dict[str, Any]:
    (_, wa, ma), (_, wb, mb) = bar.numerator, bar.denominator
    a, b = (_resolve(side, cases) or (side[0] if side[0] not in (None, ANY_REFERENCE) else None)
            for side in (bar.numerator, bar.denominator))
    row = {"key": bar.key, "label": bar.label, "target": bar.target, "numerator": a, "denominator": b,
           "ratio": None, "low": None, "high": None, "per_round": [], "verdict": "not measured", "reason": None}
    ra = rounds_of(cases[a, wa], ma) if (a, wa) in cases else {}
    rb = rounds_of(cases[b, wb], mb) if (b, wb) in cases else {}
    pairs = [(ra[r], rb[r]) for r in sorted(ra) if r in rb]
    if not pairs:
        why = [_why(side, e, cases) for side, e, got in ((bar.numerator, a, ra), (bar.denominator, b, rb)) if not got]
        row["reason"] = "; ".join(why) or "no round measured both"
        return row
    ratio = paired_ratio(pairs, seed=seed)
    return {**row, "ratio": ratio.ratio, "low": ratio.low, "high": ratio.high, "verdict": verdict(ratio, bar.target),
            "per_round": [stats.median(x) / stats.median(y) for x, y in pairs]}


def evaluate(doc: dict[str, Any], seed: int = 0) -> list[dict[str, Any]]:
    """Every bar's ratio, 95% interval and verdict at each measurement point of the document."""
    points: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for case in doc["cases"]:
        key = json.dumps(point_of(case["settings"]), sort_keys=True)
        points.setdefault(key, {})[case["engine"], case["workload"]] = case
    rows = []
    for key, cases in points.items():
        rows += [{**_evaluate_point(bar, cases, seed), "point": json.loads(key)} for bar in BARS]
    return rows


def bar_table(bars: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: each bar's engines, ratio [95% CI], per-round ratios, target and verdict."""
    header = ["bar", "llmdual engine", "reference", "ratio [95% CI]", "per round", "target", "verdict"]
    rows = []
    for bar in bars:
        ratio = "–" if bar["ratio"] is None else f"{bar['ratio']:.2f}x [{bar['low']:.2f}–{bar['high']:.2f}]"
        target = "–" if bar["target"] is None else f">= {bar['target']:.2f}x"
        rounds = ", ".join(f"{r:.2f}" for r in bar["per_round"]) or "–"
        rows.append([bar["key"], bar["numerator"] or "–", bar["denominator"] or "–", ratio, rounds, target,
                     bar["verdict"] + (f": {bar['reason']}" if bar["reason"] else "")])
    return header, rows


def markdown(doc: dict[str, Any], bars: Sequence[dict[str, Any]]) -> str:
    """The performance bar as Markdown: how it was measured, the bars, notes on the engines that ran."""
    s, env = doc["settings"], doc["env"]
    ran = {case["engine"] for case in doc["cases"]}
    notes = [f"- `{name}`: {ENGINES[name].note}" for name in ENGINES if name in ran and ENGINES[name].note]
    setup = (f"Preset `{s.get('preset')}`, batch {s.get('batch_sizes')} x {s.get('seq_lens')} tokens, "
             f"{s.get('dtype')}, {s.get('threads')} threads, {s.get('rounds')} round(s) (fresh process per engine "
             f"and round, seeded random order); generation: greedy, {s.get('prompt_len')}-token prompt, "
             f"{s.get('new_tokens')} new tokens. CPU: {env.get('cpu_model')} ({env.get('cpu_usable')} usable "
             "cores). Every engine first reproduced the expected outputs on the same weights; the figures behind "
             "each ratio are in report.md.")
    header, rows = bar_table(bars)
    escaped = [[cell.replace("|", "\\|") for cell in row] for row in rows]
    parts = ["# llmdual performance bar", setup, "## Bars", table(header, escaped)]
    return "\n\n".join(parts + (["## Notes", "\n".join(notes)] if notes else [])) + "\n"
