"""The performance bar of issue 5: llmdual measured side by side with reference GPT-2 implementations.

Every engine of ``llmdual.bench.ref_engines.ENGINES`` runs in a fresh process per round (``runner.run_case``:
same thread settings, crash isolation), the engines in a new seeded random order each round so that drift
favours none (engines that no targeted bar reads fill the table from the first round only, which bounds the
run, and the engines a bar compares run back to back); each process first proves it computes llmdual's
logits on the same weights. A *bar* is a ratio of medians, per round and then averaged over rounds
(geometric mean, two-level bootstrap 95% interval; see ``paired_ratio``), with a target; it passes when the measured
ratio reaches the target, and the interval says how sure that is.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.bench import stats
from llmdual.bench.ref_engines import ENGINES
from llmdual.bench.results import append_jsonl
from llmdual.bench.runner import CaseSpec, run_case
from llmdual.config import Config

SCHEMA = "llmdual.perf-bar/1"
# Extra that installs each module an engine may need.
EXTRAS = {"torch": "torch", "keras": "keras", "tensorflow": "keras", "jax": "jax", "onnx": "onnx",
          "onnxscript": "onnx", "onnxruntime": "onnx", "transformers": "reference", "keras_hub": "reference"}
# What each measured quantity means: label, unit, higher is better.
METRICS = {
    "train_tokens_per_s": ("train", "tok/s", True),
    "infer_tokens_per_s": ("infer", "tok/s", True),
    "generate_tokens_per_s": ("generate", "tok/s", True),
    "kv_cached_s": ("KV step", "s", False),
    "kv_recompute_s": ("recompute step", "s", False),
}
LLMDUAL_GENERATORS = tuple(e for e, s in ENGINES.items() if e.startswith("llmdual") and "generate" in s.workloads)


@dataclass(frozen=True)
class Bar:
    """``median(numerator) / median(denominator)`` of two (engine, metric) samples, and the target it must reach
    (``None``: reported, no target). A numerator engine ``None`` stands for the fastest llmdual generator, an
    engine ending in ``*`` for the fastest engine of that prefix."""

    key: str
    label: str
    numerator: tuple[str | None, str]
    denominator: tuple[str, str]
    target: float | None


BARS = (
    Bar("torch-train", "llmdual PyTorch eager train step vs HF GPT2LMHeadModel",
        ("llmdual-torch", "train_tokens_per_s"), ("hf-torch", "train_tokens_per_s"), 1.10),
    Bar("torch-infer", "llmdual PyTorch eager batch inference vs HF GPT2LMHeadModel",
        ("llmdual-torch", "infer_tokens_per_s"), ("hf-torch", "infer_tokens_per_s"), 1.15),
    Bar("keras-xla-train", "llmdual Keras/TF XLA train step vs keras-hub GPT-2 Keras/TF XLA",
        ("llmdual-keras-tf-xla", "train_tokens_per_s"), ("kerashub-tf-xla", "train_tokens_per_s"), 1.0),
    Bar("generate", "llmdual generation, fastest engine, vs HF GPT2LMHeadModel.generate",
        (None, "generate_tokens_per_s"), ("hf-torch", "generate_tokens_per_s"), 2.0),
    Bar("kv-torch", "KV cache vs recomputing, per token at full context, PyTorch",
        ("llmdual-torch", "kv_recompute_s"), ("llmdual-torch", "kv_cached_s"), 3.0),
    Bar("kv-keras", "KV cache vs recomputing, per token at full context, Keras/TF",
        ("llmdual-keras-tf", "kv_recompute_s"), ("llmdual-keras-tf", "kv_cached_s"), 3.0),
    Bar("compile-train", "extra: llmdual torch.compile train step vs HF eager",
        ("llmdual-torch-compile", "train_tokens_per_s"), ("hf-torch", "train_tokens_per_s"), None),
    Bar("compile-infer", "extra: llmdual torch.compile batch inference vs HF eager",
        ("llmdual-torch-compile", "infer_tokens_per_s"), ("hf-torch", "infer_tokens_per_s"), None),
    Bar("nanogpt-train", "extra: llmdual PyTorch eager train step vs nanoGPT",
        ("llmdual-torch", "train_tokens_per_s"), ("nanogpt-torch", "train_tokens_per_s"), None),
    Bar("kerashub-generate", "extra: llmdual generation, fastest engine, vs keras-hub's fastest",
        (None, "generate_tokens_per_s"), ("kerashub-*", "generate_tokens_per_s"), None),
)


# Engines some targeted bar reads (the generation bar reads every llmdual generator): they run every round;
# the others only fill the table and run in the first round.
BAR_ENGINES = frozenset({e for bar in BARS if bar.target is not None for e, _ in (bar.numerator, bar.denominator)
                         if e is not None} | set(LLMDUAL_GENERATORS))


def bar_groups() -> list[set[str]]:
    """Engines that targeted bars compare with each other, merged where bars share an engine; ``schedule`` runs
    each group back to back within a round, so load that drifts over minutes hits the compared engines alike."""
    groups: list[set[str]] = []
    for bar in BARS:
        if bar.target is None:
            continue
        group = {bar.denominator[0]} | ({bar.numerator[0]} if bar.numerator[0] else set(LLMDUAL_GENERATORS))
        for other in [g for g in groups if g & group]:
            groups.remove(other)
            group |= other
        groups.append(group)
    return groups


def make_settings(preset: str = "small", batch_size: int = 8, seq_len: int = 256, prompt_len: int = 32,
                  new_tokens: int = 64, threads: int = 2, repeats: int = 3, budget_s: float = 15.0, seed: int = 0,
                  nanogpt: str | None = None) -> dict[str, Any]:
    """Case settings handed to every worker (see ``llmdual.bench.ref_worker``); the AdamW recipe is
    ``TrainConfig``'s defaults. Generation and KV steps are cheap, so they repeat more than training; a
    workload stops repeating after ``budget_s`` timed seconds (at least 3 repeats), which bounds slow engines."""
    from llmdual.training import TrainConfig

    recipe = TrainConfig()
    return {
        "config": Config.preset(preset).to_dict(), "preset": preset, "batch_size": batch_size, "seq_len": seq_len,
        "prompt_len": prompt_len, "new_tokens": new_tokens, "threads": threads, "seed": seed,
        "device": "cpu", "dtype": "float32", "tolerance": 1e-4,
        "nanogpt": None if nanogpt is None else str(Path(nanogpt).resolve()),
        "train": {k: getattr(recipe, k) for k in ("lr", "beta1", "beta2", "eps", "weight_decay", "grad_clip")},
        "warmup": {"train": 1, "infer": 1, "generate": 0, "kv": 3},  # generate: the token check warmed it up
        "repeats": {"train": repeats, "infer": repeats, "generate": 2 * repeats, "kv": 8 * repeats},
        "budget_s": budget_s,
    }


def skip_reason(engine: str, nanogpt: str | None) -> str | None:
    """Why ``engine`` cannot run here (a module missing, naming its extra; no nanoGPT checkout), else None."""
    missing = [m for m in ENGINES[engine].modules if importlib.util.find_spec(m) is None]
    if missing:
        extras = ",".join(sorted({EXTRAS.get(m, m) for m in missing}))
        return f"not installed: {', '.join(missing)}; install with: pip install 'llmdual[{extras}]'"
    if ENGINES[engine].family == "nanogpt" and not nanogpt:
        return "nanoGPT is not downloadable at run time: pass --nanogpt PATH to a checkout's model.py"
    if ENGINES[engine].family == "nanogpt" and not Path(nanogpt).exists():
        return f"--nanogpt path does not exist: {nanogpt}"
    return None


def worker_command(case_json: str, result_path: str) -> list[str]:
    """The reference worker's command line (``runner``'s command-builder signature)."""
    return [sys.executable, "-m", "llmdual.bench.ref_worker", "--case-json", case_json, "--result", result_path]


def run(engines: Sequence[str], settings: dict[str, Any], rounds: int, jsonl: str | Path, seed: int = 0,
        timeout_s: float = 600.0, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run the engines (fresh process each; see ``schedule`` for rounds and order), appending each record to
    ``jsonl`` as it finishes; engines that cannot run are recorded once as ``skipped``."""
    records, runnable = [], []
    for engine in engines:
        reason = skip_reason(engine, settings.get("nanogpt"))
        if reason:
            record = {"engine": engine, "round": 0, "status": "skipped", "reason": reason}
            append_jsonl(jsonl, record)
            records.append(record)
            log(f"{engine}: skipped ({reason})")
        else:
            runnable.append(CaseSpec(engine, "perf-bar", settings))
    todo = schedule(runnable, rounds, seed)
    for i, (round_index, spec) in enumerate(todo, start=1):
        record = run_case(spec, round_index, timeout_s, worker_command)
        record.pop("settings")
        append_jsonl(jsonl, record)
        records.append(record)
        note = "" if record["status"] == "ok" else f": {record['reason']}"
        log(f"[{i}/{len(todo)}] {spec.engine} round {round_index + 1}: {record['status']} "
            f"in {record['wall_s']:.0f} s{note}")
    return records


def schedule(specs: Sequence[CaseSpec], rounds: int, seed: int) -> list[tuple[int, CaseSpec]]:
    """(round, case) pairs: engines behind a targeted bar in every round, the others in the first only, in a
    fresh seeded random order each round, the engines of a ``bar_groups`` group next to each other."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    group_of = {engine: i for i, group in enumerate(bar_groups()) for engine in group}
    rng, order = random.Random(seed), []
    for round_index in range(rounds):
        units: dict[Any, list[CaseSpec]] = {}
        for spec in specs:
            if round_index == 0 or spec.engine in BAR_ENGINES:
                units.setdefault(group_of.get(spec.engine, spec.engine), []).append(spec)
        shuffled = list(units.values())
        rng.shuffle(shuffled)
        for unit in shuffled:
            rng.shuffle(unit)
            order.extend((round_index, spec) for spec in unit)
    return order


def pooled(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per engine: status (the first non-ok one wins), reason, every metric's values over all ok rounds (and
    per round, in ``by_round``), and the scalars of its last ok round."""
    engines: dict[str, dict[str, Any]] = {}
    for record in records:
        entry = engines.setdefault(record["engine"], {"status": "ok", "reason": None, "values": {},
                                                      "by_round": {}, "scalars": {}, "rounds": 0})
        if record["status"] != "ok":
            if entry["status"] == "ok":
                entry.update(status=record["status"], reason=record["reason"])
            continue
        entry["rounds"] += 1
        entry["scalars"] = record.get("scalars", {})
        for metric, values in record.get("measurements", {}).items():
            entry["values"].setdefault(metric, []).extend(values)
            entry["by_round"].setdefault(record.get("round", 0), {})[metric] = list(values)
    return engines


def paired_samples(engines: dict[str, dict[str, Any]], numerator: tuple[str, str],
                   denominator: tuple[str, str]) -> list[tuple[list[float], list[float]]]:
    """(numerator values, denominator values) of every round in which both engines measured their metric."""
    (a, ma), (b, mb) = numerator, denominator
    rounds_a, rounds_b = engines[a]["by_round"], engines[b]["by_round"]
    common = sorted(r for r in rounds_a if r in rounds_b and ma in rounds_a[r] and mb in rounds_b[r])
    return [(rounds_a[r][ma], rounds_b[r][mb]) for r in common]


def paired_ratio(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], confidence: float = 0.95,
                 n_boot: int = 2000, seed: int = 0) -> stats.Ratio:
    """Geometric mean over rounds of each round's ratio of medians, with a two-level bootstrap interval (rounds
    resampled, then the repeats within each), so rounds that disagree widen it; one round gives what
    ``stats.ratio_of_medians`` gives. Pairing by round keeps load that changes between rounds out of the ratio,
    which pooling every round's repeats would mix in."""
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
    logs_by_round = np.array(logs)  # (rounds, n_boot)
    rounds = rng.integers(0, len(pairs), (n_boot, len(pairs)))
    draws = logs_by_round[rounds, np.arange(n_boot)[:, None]].mean(axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.exp(np.percentile(draws, [tail, 100.0 - tail]))
    return stats.Ratio(float(np.exp(np.mean(point))), float(low), float(high))


def _best(engines: dict[str, dict[str, Any]], candidates: Sequence[str], metric: str) -> str | None:
    """The candidate engine with the highest median of ``metric`` among those that measured it."""
    have = [e for e in candidates if metric in engines.get(e, {}).get("values", {})]
    return max(have, key=lambda e: stats.median(engines[e]["values"][metric]), default=None)


def evaluate(engines: dict[str, dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Every bar's measured ratio, 95% interval and verdict (or why it could not be measured)."""
    results = []
    for bar in BARS:
        num_engine, num_metric = bar.numerator
        den_engine, den_metric = bar.denominator
        if num_engine is None:
            num_engine = _best(engines, LLMDUAL_GENERATORS, num_metric)
        if den_engine.endswith("*"):
            den_engine = _best(engines, [e for e in ENGINES if e.startswith(den_engine[:-1])], den_metric)
        row: dict[str, Any] = {"key": bar.key, "label": bar.label, "target": bar.target, "numerator": num_engine,
                               "denominator": den_engine, "metrics": [num_metric, den_metric]}
        a = engines.get(num_engine, {}).get("values", {}).get(num_metric)
        b = engines.get(den_engine, {}).get("values", {}).get(den_metric)
        pairs = paired_samples(engines, (num_engine, num_metric), (den_engine, den_metric)) if a and b else []
        if not pairs:
            missing = [e for e, v in ((num_engine, a), (den_engine, b)) if not v]
            why = "; ".join(f"{e}: {engines[e]['reason']}" if e in engines and engines[e]["reason"] else
                            f"{e or 'no engine'}: not measured" for e in missing) or "no round measured both"
            results.append({**row, "ratio": None, "low": None, "high": None, "per_round": [],
                            "verdict": "not measured", "reason": why})
            continue
        r = paired_ratio(pairs, seed=seed)
        rounds = [stats.median(x) / stats.median(y) for x, y in pairs]
        results.append({**row, "ratio": r.ratio, "low": r.low, "high": r.high, "per_round": rounds,
                        "reason": None, "verdict": verdict(r, bar.target)})
    return results


def verdict(ratio: stats.Ratio, target: float | None) -> str:
    """``pass``/``FAIL`` on the measured ratio, qualified by where the interval lies relative to the target."""
    if target is None:
        return "within noise of 1" if ratio.within_noise else ("faster" if ratio.ratio > 1 else "slower")
    passed = "pass" if ratio.ratio >= target else "FAIL"
    if ratio.low >= target or ratio.high < target:
        return passed
    return f"{passed} (interval straddles the target)"


def engine_rows(engines: dict[str, dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Per engine and metric: median and its bootstrap 95% interval (the absolute figures behind the ratios)."""
    rows = []
    for name, entry in engines.items():
        figures = {}
        for metric, values in entry["values"].items():
            low, high = stats.bootstrap_median_ci(values, seed=seed)
            figures[metric] = {"median": stats.median(values), "low": low, "high": high, "n": len(values)}
        rows.append({"engine": name, "status": entry["status"], "reason": entry["reason"],
                     "rounds": entry["rounds"], "note": ENGINES[name].note if name in ENGINES else "",
                     "max_abs_diff": entry["scalars"].get("max_abs_diff"), "figures": figures})
    return rows


def _figure(value: float, metric: str) -> str:
    """A median or bound for reading: tokens/s with separators, seconds in ms."""
    return f"{value * 1e3:.2f} ms" if METRICS[metric][1] == "s" else f"{value:,.0f}"


def bar_table(bars: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the ratio table: each bar's engines, ratio [95% CI], per-round ratios, target, verdict."""
    header = ["bar", "llmdual engine", "reference", "ratio [95% CI]", "per round", "target", "verdict"]
    rows = []
    for bar in bars:
        ratio = "–" if bar["ratio"] is None else f"{bar['ratio']:.2f}x [{bar['low']:.2f}–{bar['high']:.2f}]"
        target = "–" if bar["target"] is None else f">= {bar['target']:.2f}x"
        verdict_text = bar["verdict"] + (f": {bar['reason']}" if bar["reason"] else "")
        rounds = ", ".join(f"{r:.2f}" for r in bar["per_round"]) or "–"
        rows.append([bar["key"], bar["numerator"] or "–", bar["denominator"] or "–", ratio, rounds, target,
                     verdict_text])
    return header, rows


def engine_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the absolute figures: per engine, each metric's median [95% interval]."""
    header = ["engine", "status"] + [f"{label} ({unit})" for label, unit, _ in METRICS.values()] + ["logits diff"]
    out = []
    for row in rows:
        cells = [row["engine"], row["status"] if row["status"] == "ok" else f"{row['status']}: {row['reason']}"]
        for metric in METRICS:
            f = row["figures"].get(metric)
            cells.append("–" if f is None else
                         f"{_figure(f['median'], metric)} [{_figure(f['low'], metric)}–{_figure(f['high'], metric)}]")
        diff = row["max_abs_diff"]
        cells.append("–" if diff is None else f"{diff:.1e}")
        out.append(cells)
    return header, out


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table (pipes in cells escaped)."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


def markdown_report(doc: dict[str, Any]) -> str:
    """The Markdown report: what was measured and how, the bars, the engines' absolute figures, notes."""
    s, env = doc["settings"], doc["env"]
    notes = [f"- `{r['engine']}`: {r['note']}" for r in doc["engines"] if r["note"]]
    setup = (f"Preset `{s['preset']}`, batch {s['batch_size']} x {s['seq_len']} tokens, fp32, {s['threads']} "
             f"threads, {doc['rounds']} round(s) per bar engine (fresh process each, interleaved; table-only "
             f"engines one); generation: greedy, batch 1, {s['prompt_len']}-token prompt, {s['new_tokens']} new "
             f"tokens; KV step at {s['config']['max_seq_len']} tokens. CPU: {env.get('cpu_model')} "
             f"({env.get('cpu_usable')} usable cores). Ratios are ratios of medians with a bootstrap 95% interval; "
             "every engine first matched llmdual's logits on the same weights.")
    return "\n\n".join([
        "# llmdual performance bar",
        setup,
        "## Bars",
        markdown_table(*bar_table(doc["bars"])),
        "## Engines",
        markdown_table(*engine_table(doc["engines"])),
        *(["## Notes", "\n".join(notes)] if notes else []),
    ]) + "\n"


def document(bars: list[dict[str, Any]], rows: list[dict[str, Any]], settings: dict[str, Any],
             env: dict[str, Any], rounds: int) -> dict[str, Any]:
    """The JSON document of a run (schema ``llmdual.perf-bar/1``)."""
    return {"schema": SCHEMA, "env": env, "settings": settings, "rounds": rounds, "bars": bars, "engines": rows}
