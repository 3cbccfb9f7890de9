"""Render a results document: workload tables (rich in a terminal, plain text without it), a Markdown report
with a recommendation. Everything reads only the document, so a report can be rebuilt from a saved file."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmdual.bench.engines import is_reference
from llmdual.bench.results import METRICS, POINT_KEYS, WORKLOAD_METRICS, WORKLOADS, Metric, write_text
from llmdual.report import table

# Which workloads (and so which summary groups) each stated priority is decided on.
PRIORITIES: dict[str, tuple[str, ...]] = {
    "training": ("train",),
    "inference": ("infer", "classify"),
    "generation": ("generate",),
    "memory": WORKLOADS,
}
MEMORY_METRICS = ("peak_device_mb", "peak_rss_mb")


def format_value(value: float | None, unit: str) -> str:
    """A figure with its unit, scaled for reading (seconds as ms/µs, MB as GB, thousands separators)."""
    if value is None:
        return "–"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.3g} µs"
        return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"
    if unit == "MB" and value >= 1024:
        return f"{value / 1024:.2f} GB"
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"


def metric_of(name: str) -> Metric:
    return METRICS.get(name, Metric(name, "", True))


def varying(points: Sequence[dict[str, Any]]) -> list[str]:
    """Point keys whose values differ between the given points (the only ones worth printing)."""
    return [k for k in POINT_KEYS if len({json.dumps(p.get(k)) for p in points}) > 1]


def point_label(point: dict[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k} {point.get(k)}" for k in keys)


def _numbers(settings: dict[str, Any]) -> list[Any]:
    return [settings.get(k) for k in ("batch_size", "seq_len", "new_tokens")]


def _sort_key(value: Any) -> tuple[int, float]:
    return (0, float(value)) if isinstance(value, (int, float)) else (1, 0.0)


def _entries(doc: dict[str, Any]) -> dict[tuple[int, str], dict[str, Any]]:
    """Summary ranking entries by (case index, metric)."""
    return {(e["case"], g["metric"]): e for g in doc["summary"]["groups"] for e in g["entries"]}


def format_flops(value: float) -> str:
    """FLOP/s in the largest unit that keeps the figure >= 1 (GFLOP/s on CPUs, TFLOP/s on GPUs)."""
    return f"{value / 1e12:.3g} TFLOP/s" if value >= 1e12 else f"{value / 1e9:.3g} GFLOP/s"


def workload_table(doc: dict[str, Any], workload: str, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one workload's table: ok cases fastest first, then the others with their reasons.
    ``compact`` (the terminal's) shows the spread as the IQR only and shortens the reasons."""
    cases = [(i, c) for i, c in enumerate(doc["cases"]) if c["workload"] == workload]
    entries = _entries(doc)
    primary, *others = WORKLOAD_METRICS[workload]
    order = {e["case"]: rank for g in doc["summary"]["groups"] if g["metric"] == primary
             for rank, e in enumerate(g["entries"])}
    cases.sort(key=lambda ic: (ic[1]["status"] != "ok", *map(_sort_key, _numbers(ic[1]["settings"])),
                               order.get(ic[0], 0)))
    keys = varying([c["settings"] for _, c in cases])
    show_flops = any((c.get("flops") or {}).get("achieved") for _, c in cases)
    show_export = any("export_s" in c["scalars"] for _, c in cases)
    header = ["engine", *keys, metric_of(primary).label, "IQR" if compact else "spread (IQR; 95% CI)",
              "vs fastest", *(metric_of(m).label + (" p50 / p90 / p99" if m == "token_latency_s" else "")
                              for m in others),
              *(["model FLOP/s (MFU)"] if show_flops else []), "peak memory", "build / warm-up",
              *(["ONNX export / file"] if show_export else []), "status"]
    rows = []
    for index, case in cases:
        s, unit = case["stats"], metric_of(primary).unit
        row = [case["engine"], *(str(case["settings"].get(k, "–")) for k in keys)]
        if primary in s:
            entry = entries.get((index, primary))
            rel = "–" if entry is None else (
                "fastest" if entry["relative"] == 1.0 else
                f"{entry['relative']:.2f}× [{entry['relative_ci'][0]:.2f}–{entry['relative_ci'][1]:.2f}]")
            spread = format_value(s[primary]["iqr"], unit)
            if not compact:
                spread += (f"; {format_value(s[primary]['ci_low'], unit)}–"
                           f"{format_value(s[primary]['ci_high'], unit)}")
            row += [format_value(s[primary]["median"], unit), spread, rel]
        else:
            row += ["–", "–", "–"]
        for metric in others:
            if metric not in s:
                row.append("–")
            elif metric == "token_latency_s":
                row.append(" / ".join(format_value(s[metric][p], "s") for p in ("p50", "p90", "p99")))
            else:
                row.append(format_value(s[metric]["median"], metric_of(metric).unit))
        if show_flops:
            f = case.get("flops") or {}
            mfu = f" ({100 * f['utilisation']:.1f}%" if f.get("utilisation") is not None else ""
            if mfu and f.get("probe_utilisation") is not None and f.get("probe_peak") != f.get("peak"):
                mfu += f"; {100 * f['probe_utilisation']:.1f}% of probe"
            mfu += ")" if mfu else ""
            row.append(f"{format_flops(f['achieved'])}{mfu}" if f.get("achieved") else "–")
        memory = next((m for m in MEMORY_METRICS if m in s), None)
        row.append(format_value(s[memory]["median"], "MB") if memory else "–")
        build, warm = case["scalars"].get("build_s"), case["scalars"].get("warmup_s")
        row.append(f"{format_value(build, 's')} / {format_value(warm, 's')}")
        if show_export:
            export, size = case["scalars"].get("export_s"), case["scalars"].get("file_mb")
            row.append("–" if export is None else f"{format_value(export, 's')} / {format_value(size, 'MB')}")
        reason = (case["reason"] or "").replace("\n", " ")
        row.append("ok" if case["status"] == "ok" else f"{case['status']}: {reason[:100 if compact else 160]}")
        rows.append(row)
    return header, rows


def print_tables(doc: dict[str, Any], console: Any = None) -> None:
    """Print one table per workload: a rich table when rich is installed (or ``console`` is a rich Console),
    else aligned plain text on ``console`` (a ``print``-like callable) or stdout."""
    for workload in WORKLOADS:
        header, rows = workload_table(doc, workload, compact=True)
        if not rows:
            continue
        if console is None and importlib.util.find_spec("rich") is not None:
            from rich.console import Console

            console = Console(width=200)
        if console is not None and hasattr(console, "print"):
            from rich.table import Table

            grid = Table(title=workload, title_justify="left")
            for i, name in enumerate(header):
                grid.add_column(name, justify="left" if i == 0 or name == "status" else "right", overflow="fold")
            for row in rows:
                grid.add_row(*row, style=None if row[-1] == "ok" else "red")
            console.print(grid)
        else:
            (console or print)(f"{workload}\n{table(header, rows, markdown=False)}\n")


def _decision(group: dict[str, Any], keys: Sequence[str]) -> tuple[str, str | None, bool]:
    """One recommendation bullet for a group, the winning framework (None if none is clear), and noise."""
    metric, entries = metric_of(group["metric"]), group["entries"]
    where = f"**{group['workload']}**" + (f" ({point_label(group['point'], keys)})" if keys else "")
    best = entries[0]
    head = f"{where}, {metric.label}: "
    rival = next((e for e in entries if e["framework"] != best["framework"]), None)
    if rival is None:
        return head + f"only {best['framework']} ran ({best['engine']}); nothing to compare.", None, False
    factor, low, high = 1 / rival["relative"], 1 / rival["relative_ci"][1], 1 / rival["relative_ci"][0]
    better = "higher" if group["higher_is_better"] else "lower"
    figures = (f"{best['engine']} {format_value(best['median'], metric.unit)} vs {rival['engine']} "
               f"{format_value(rival['median'], metric.unit)}")
    interval = f"{factor:.2f}× (95% CI {low:.2f}–{high:.2f}×)"
    caveat = " Only one measurement each, so the interval is degenerate." if min(best["n"], rival["n"]) < 2 else ""
    if rival["within_noise"]:
        text = (f"within noise — {best['framework']} and {rival['framework']} differ by {interval}, "
                f"an interval that contains 1, so neither wins ({figures}).")
        return head + text + caveat, None, True
    text = (f"**{best['framework']}** wins: {interval} {better} {metric.label} than "
            f"{rival['framework']}, the next framework ({figures}).")
    return head + text + caveat, best["framework"], False


def recommendation(doc: dict[str, Any], priority: str) -> list[str]:
    """Markdown bullets: per workload (and point) which framework wins and by how much, or that it is noise."""
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}; choose one of {sorted(PRIORITIES)}")
    workloads = PRIORITIES[priority]
    groups = [{**g, "entries": [e for e in g["entries"] if not is_reference(e["engine"])]}
              for g in doc["summary"]["groups"] if g["workload"] in workloads
              and (g["metric"] in MEMORY_METRICS) == (priority == "memory")]
    groups = [g for g in groups if g["entries"]]
    lines, wins, noise = [], {}, 0
    for group in groups:
        keys = varying([g["point"] for g in groups if g["workload"] == group["workload"]])
        text, winner, is_noise = _decision(group, keys)
        lines.append(f"- {text}")
        noise += is_noise
        if winner:
            wins[winner] = wins.get(winner, 0) + 1
    if wins:
        tally = ", ".join(f"{fw} {n}" for fw, n in sorted(wins.items(), key=lambda kv: -kv[1]))
        lines.append(f"- Overall for {priority}: clear wins by framework: {tally}; within noise: {noise} "
                     f"of {len(groups)} comparisons.")
    elif noise:
        lines.append(f"- Overall for {priority}: no framework is ahead beyond noise on this data.")
    elif not groups:
        lines.append(f"- No successful cases for {', '.join(workloads)}: nothing to recommend.")
    for case in doc["cases"]:
        if case["workload"] in workloads and case["status"] != "ok" and not is_reference(case["engine"]):
            lines.append(f"- Not compared: {case['engine']} {case['workload']} was {case['status']} "
                         f"({(case['reason'] or '')[:160]}).")
    return lines


def markdown_report(doc: dict[str, Any], priority: str, charts: Sequence[Path] = ()) -> str:
    """The whole Markdown report: environment, settings, one table per workload, recommendation, charts."""
    env = doc["env"]
    packages = ", ".join(f"{k} {v or 'not installed'}" for k, v in (env.get("packages") or {}).items())
    gpus = "; ".join(f"{g['name']} (driver {g['driver']})" for g in env.get("gpus") or []) or "none"
    out = ["# llmdual benchmark report", "", "## Environment", "",
           f"- When: {env.get('timestamp', '?')}; Python {env.get('python', '?')} on {env.get('platform', '?')}",
           (f"- CPU: {env.get('cpu_model', '?')}, {env.get('cpu_usable', '?')} of {env.get('cpu_count', '?')} "
            f"cores usable, threads {env.get('threads') or 'default'}, memory {env.get('memory_gb', '?')} GB"),
           f"- GPUs: {gpus}", f"- Packages: {packages or '?'}", "", "## Settings", ""]
    out += [f"- {key}: `{json.dumps(value)}`" for key, value in doc["settings"].items()]
    out += ["", "## Results", ""]
    for workload in WORKLOADS:
        header, rows = workload_table(doc, workload)
        if rows:
            out += [f"### {workload}", "", table(header, [[c.replace("|", "\\|") for c in row] for row in rows]), ""]
    sources = sorted({c["flops"]["peak_source"] for c in doc["cases"] if (c.get("flops") or {}).get("peak_source")})
    if sources:
        out += [f"MFU is judged against: {', '.join(sources)}.", ""]
    out += [f"## Recommendation (priority: {priority})", "", *recommendation(doc, priority), ""]
    if charts:
        out += ["## Charts", "", *(f"![{p.stem}]({p.name})" for p in charts), ""]
    return "\n".join(out)


def write_report(doc: dict[str, Any], out_dir: str | Path, priority: str, charts: Sequence[Path] = ()) -> Path:
    """Write ``report.md`` (linking ``charts``) into ``out_dir``."""
    return write_text(Path(out_dir) / "report.md", markdown_report(doc, priority, charts))
