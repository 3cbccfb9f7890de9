"""Render a results document: workload tables (rich in a terminal, plain text without it) and a Markdown report
with the verdict. Everything reads only the document, so a report can be rebuilt from a saved file."""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmdual.bench.engines.table import is_quantized
from llmdual.bench.report.results import WORKLOAD_METRICS, WORKLOADS, write_text
from llmdual.bench.report.units import format_flops, format_value, metric_of, varying
from llmdual.bench.report.verdict import MEMORY_METRICS, verdict
from llmdual.core.config import Config
from llmdual.core.report import table


def _numbers(settings: dict[str, Any]) -> list[Any]:
    return [settings.get(k) for k in ("batch_size", "seq_len", "new_tokens")]


def _sort_key(value: Any) -> tuple[int, float]:
    return (0, float(value)) if isinstance(value, (int, float)) else (1, 0.0)


def _entries(doc: dict[str, Any]) -> dict[tuple[int, str], dict[str, Any]]:
    """Summary ranking entries by (case index, metric)."""
    return {(e["case"], g["metric"]): e for g in doc["summary"]["groups"] for e in g["entries"]}


def _ordered(doc: dict[str, Any], workload: str) -> list[tuple[int, dict[str, Any]]]:
    """A workload's (index, case): ok cases by point, fastest first, then the others."""
    cases = [(i, c) for i, c in enumerate(doc["cases"]) if c["workload"] == workload]
    primary = WORKLOAD_METRICS[workload][0]
    order = {e["case"]: rank for g in doc["summary"]["groups"] if g["metric"] == primary
             for rank, e in enumerate(g["entries"])}
    return sorted(cases, key=lambda ic: (ic[1]["status"] != "ok", *map(_sort_key, _numbers(ic[1]["settings"])),
                                         order.get(ic[0], 0)))


def workload_table(doc: dict[str, Any], workload: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one workload's full table (the report's): ok cases fastest first, then the others with
    their reasons."""
    cases, entries = _ordered(doc, workload), _entries(doc)
    primary, *others = WORKLOAD_METRICS[workload]
    keys = varying([c["settings"] for _, c in cases])
    show_flops = any((c.get("flops") or {}).get("achieved") for _, c in cases)
    show_export = any("export_s" in c["scalars"] for _, c in cases)
    header = ["engine", *keys, metric_of(primary).label, "spread (IQR; 95% CI)",
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
                f"{entry['relative']:.2f}× [{entry['relative_ci'][0]:.2f}–{entry['relative_ci'][1]:.2f}]"
                + (" noise" if entry["within_noise"] else ""))
            spread = (f"{format_value(s[primary]['iqr'], unit)}; {format_value(s[primary]['ci_low'], unit)}–"
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
        row.append("ok" if case["status"] == "ok" else f"{case['status']}: {reason[:160]}")
        rows.append(row)
    return header, rows


def int8_table(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the int8 table: each engine's weight size, and for the int8 engines their quality against
    the same model in float32 on the built-in corpus (``llmdual.quantize.measure``); empty without int8 engines."""
    header = ["engine", "weights MB", "vs float32", "perplexity fp32", "perplexity int8", "Δ perplexity",
              "top-1 agreement", "max abs Δ logit"]
    firsts: dict[str, dict[str, Any]] = {}
    for case in doc["cases"]:
        s = case["scalars"]
        if case["status"] == "ok" and ("weights_mb" in s or "file_mb" in s):
            firsts.setdefault(case["engine"], s)
    if not any(is_quantized(engine) for engine in firsts):
        return header, []
    rows = []
    for engine, s in firsts.items():
        size = s.get("weights_mb", s.get("file_mb"))
        row = [engine + ("" if "weights_mb" in s else " (ONNX file)"), f"{size:.1f}"]
        if "perplexity_int8" in s:
            row += [f"{size / s['fp32_weights_mb']:.2f}×", f"{s['perplexity_fp32']:.2f}", f"{s['perplexity_int8']:.2f}",
                    f"{100 * s['perplexity_delta']:+.3f}%", f"{100 * s['top1_agreement']:.2f}%",
                    f"{s['max_abs_logit_diff']:.3g}"]
        else:
            row += ["–"] * 6
        rows.append(row)
    return header, rows


# The terminal's columns per workload beside the headline, dropped from the right where 100 columns are too few:
# (metric, short header, statistic).
TERMINAL_EXTRAS = {"generate": (("tokens_per_s_batch", "batch tok/s", "median"), ("ttft_s", "TTFT", "median"),
                                ("token_latency_s", "token p50", "p50")),
                   "kv": (("kv_recompute_s", "recompute", "median"),)}
TERMINAL_WIDTH = 100
TERMINAL_CAPTION = "vs fastest: ratio [95% interval]; ≈ within noise. Spreads, MFU, build times: report.md"
_GAP = 2  # spaces between terminal columns (rich: padding 1 each side, no box)


def _short(value: float | None, unit: str) -> str:
    """A figure for the terminal: rates without their unit (it is in the header), scaled units for the rest."""
    if value is None:
        return "–"
    if unit in ("tok/s", "seq/s"):
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    return format_value(value, unit)


def terminal_table(doc: dict[str, Any], workload: str, width: int = TERMINAL_WIDTH
                   ) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and notes of one workload's terminal table, at most ``width`` columns: the headline, its ratio
    to the fastest with the 95% interval, the workload's main latencies (as many as fit), memory, warm-up and the
    status; the notes give each failure's reason (the full table is in report.md)."""
    cases, entries = _ordered(doc, workload), _entries(doc)
    primary = WORKLOAD_METRICS[workload][0]
    keys = varying([c["settings"] for _, c in cases])
    metric = metric_of(primary)
    headline = metric.unit + (" b1" if primary == "tokens_per_s_b1" else "") if metric.unit != "s" else metric.label
    extras = list(TERMINAL_EXTRAS.get(workload, ()))
    while True:
        header = ["engine", *keys, headline, "vs fastest", *(label for _, label, _ in extras), "memory", "warm-up",
                  "status"]
        rows, notes = [], []
        for index, case in cases:
            s = case["stats"]
            row = [case["engine"], *(str(case["settings"].get(k, "–")) for k in keys)]
            entry = entries.get((index, primary))
            row.append(_short(s[primary]["median"], metric.unit) if primary in s else "–")
            if entry is None:
                row.append("–")
            elif entry["relative"] == 1.0:
                row.append("fastest")
            else:
                low, high = entry["relative_ci"]
                row.append(f"{'≈' if entry['within_noise'] else ''}{entry['relative']:.2f} [{low:.2f}–{high:.2f}]")
            row += [_short(s[m][stat], metric_of(m).unit) if m in s else "–" for m, _, stat in extras]
            memory = next((m for m in MEMORY_METRICS if m in s), None)
            row.append(format_value(s[memory]["median"], "MB") if memory else "–")
            row.append(format_value(case["scalars"].get("warmup_s"), "s"))
            by_design = (case["reason"] or "").startswith(("not applicable", "not supported"))
            row.append("n/a" if by_design else case["status"])
            rows.append(row)
            if case["status"] != "ok" and not by_design:
                reason = (case["reason"] or "").replace("\n", " ")
                notes.append(f"{case['engine']}: {case['status']}: {reason[:240]}")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        if sum(widths) + _GAP * (len(header) - 1) <= width or not extras:
            return header, rows, notes
        extras.pop()


def print_tables(doc: dict[str, Any], console: Any = None, width: int = TERMINAL_WIDTH) -> None:
    """Print one narrow table per workload (``terminal_table``, at most ``width`` columns) and its failures'
    reasons: a rich table when rich is installed (or ``console`` is a rich Console), else aligned plain text on
    ``console`` (a ``print``-like callable) or stdout."""
    for workload in WORKLOADS:
        header, rows, notes = terminal_table(doc, workload, width)
        if not rows:
            continue
        notes = [line for note in notes for line in textwrap.wrap(note, width, subsequent_indent="  ")]
        if console is None and importlib.util.find_spec("rich") is not None:
            from rich.console import Console

            console = Console(width=width)
        if console is not None and hasattr(console, "print"):
            from rich.table import Table

            grid = Table(title=workload, title_justify="left", box=None, padding=(0, 1), pad_edge=False,
                         show_edge=False, header_style="bold")
            for i, name in enumerate(header):
                grid.add_column(name, justify="left" if i == 0 or name == "status" else "right", no_wrap=True)
            for row in rows:
                grid.add_row(*row, style=None if row[-1] == "ok" else "red")
            console.print(grid, width=min(width, console.width))
            for line in [*notes, TERMINAL_CAPTION, ""]:
                console.print(line, highlight=False, markup=False, width=min(width, console.width))
        else:
            (console or print)("\n".join([workload, table(header, rows, markdown=False), *notes, TERMINAL_CAPTION,
                                          ""]))
    header, rows = int8_table(doc)
    if rows:
        (console.print if hasattr(console, "print") else console or print)(
            f"int8 (quality on the built-in corpus against the same model in float32)\n"
            f"{table(header, rows, markdown=False)}\n")


def settings_lines(settings: dict[str, Any]) -> list[str]:
    """The settings a result depends on, in words ("matmul peak 324 GFLOP/s"), not a raw dump."""
    lines = []
    if isinstance(settings.get("config"), dict):
        c = Config.from_dict(settings["config"])
        lines.append(f"- Model: {settings.get('preset', 'custom')}, {c.parameter_count():,} parameters "
                     f"(vocab {c.vocab_size}, {c.n_layers} layers, width {c.d_model}, {c.n_heads} heads, "
                     f"context {c.max_seq_len})")
    if settings.get("points"):
        shapes = ", ".join(f"{b} × {t}" for b, t in settings["points"])
        prompt = settings.get("prompt_len") or "the sequence length"
        lines.append(f"- Batch × sequence: {shapes}; generation: prompt {prompt}, "
                     f"{settings.get('new_tokens', '?')} new tokens, greedy")
    if settings.get("dtype"):
        tf32 = ", TF32 on" if settings.get("tf32") else ""
        lines.append(f"- Precision {settings['dtype']}{tf32} on {settings.get('device', '?')}, "
                     f"{settings.get('threads', '?')} threads per engine")
    if settings.get("engines"):
        lines.append(f"- Engines: {', '.join(settings['engines'])}; workloads: {', '.join(settings['workloads'])}")
    if settings.get("repeats"):
        budget = f", at most {settings['budget_s']:g} s timed per case" if settings.get("budget_s") else ""
        lines.append(f"- Timing: {settings.get('warmup', '?')} warm-up + {settings['repeats']} timed repeats per "
                     f"case{budget}, {settings.get('rounds', 1)} round(s) of fresh processes, seed "
                     f"{settings.get('seed', 0)}")
    if settings.get("tolerance") is not None:
        lines.append(f"- Checked before timing: logits within {settings['tolerance']:g} of PyTorch eager float32")
    if settings.get("probe_flops"):
        lines.append(f"- Matmul peak {format_flops(float(settings['probe_flops']))} "
                     f"({settings.get('probe_source', 'matmul probe')})")
    return lines


def markdown_report(doc: dict[str, Any], priority: str, charts: Sequence[Path] = ()) -> str:
    """The whole Markdown report: environment, settings, verdict, one table per workload, charts."""
    env = doc["env"]
    packages = ", ".join(f"{k} {v or 'not installed'}" for k, v in (env.get("packages") or {}).items())
    gpus = "; ".join(f"{g['name']} (driver {g['driver']})" for g in env.get("gpus") or []) or "none"
    out = ["# llmdual benchmark report", "", "## Environment", "",
           f"- When: {env.get('timestamp', '?')}; Python {env.get('python', '?')} on {env.get('platform', '?')}",
           (f"- CPU: {env.get('cpu_model', '?')}, {env.get('cpu_usable', '?')} of {env.get('cpu_count', '?')} "
            f"cores usable, threads {env.get('threads') or 'default'}, OpenMP wait policy "
            f"{env.get('omp_wait_policy', 'default')}, memory {env.get('memory_gb', '?')} GB"),
           f"- GPUs: {gpus}", f"- Packages: {packages or '?'}", "", "## Settings", "",
           *settings_lines(doc["settings"]), "", f"## Verdict (priority: {priority})", "",
           *verdict(doc, priority), "", "## Results", ""]
    for workload in WORKLOADS:
        header, rows = workload_table(doc, workload)
        if rows:
            out += [f"### {workload}", "", table(header, [[c.replace("|", "\\|") for c in row] for row in rows]), ""]
    header, rows = int8_table(doc)
    if rows:
        out += ["### int8", "", ("Weights in memory (ONNX: the file), and each int8 engine's perplexity and next-token "
                "agreement against the same seed-initialised model in float32, on the built-in corpus' validation "
                "blocks (`llmdual.quantize.measure`). Speed: the int8 rows of the tables above."), "",
                table(header, rows), ""]
    sources = sorted({c["flops"]["peak_source"] for c in doc["cases"] if (c.get("flops") or {}).get("peak_source")})
    if sources:
        out += [f"MFU is judged against: {', '.join(sources)}.", ""]
    if charts:
        out += ["## Charts", "", *(f"![{p.stem}]({p.name})" for p in charts), ""]
    return "\n".join(out)


def write_report(doc: dict[str, Any], out_dir: str | Path, priority: str, charts: Sequence[Path] = ()) -> Path:
    """Write ``report.md`` (linking ``charts``) into ``out_dir``."""
    return write_text(Path(out_dir) / "report.md", markdown_report(doc, priority, charts))
