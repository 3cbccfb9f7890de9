"""PNG charts of a results document (matplotlib, from the ``report`` extra, imported only when a chart is drawn)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from llmdual.bench.engines.table import ENGINES
from llmdual.bench.report.results import WORKLOAD_METRICS, WORKLOADS
from llmdual.bench.report.units import metric_of, point_label, varying
from llmdual.bench.report.verdict import MEMORY_METRICS
from llmdual.core.io import atomic_write

# One colour per framework in every chart of every run; engines with a non-default setting (``jit_compile=True``,
# ``torch.compile``) are hatched, so XLA and non-XLA Keras/TensorFlow stay apart.
FRAMEWORK_COLOURS = {
    "PyTorch": "#ee4c2c", "Keras/TensorFlow": "#ff8f00", "Keras/JAX": "#1a73e8", "Keras/PyTorch": "#8e24aa",
    "ONNX Runtime": "#546e7a", "HF/PyTorch": "#f4b400", "nanoGPT/PyTorch": "#795548",
    "keras-hub/tensorflow": "#ffcc80", "keras-hub/jax": "#90caf9", "keras-hub/torch": "#ce93d8",
}
# The generic engines' frameworks (backends without specialised rows) take these in registry order.
GENERIC_COLOURS = ("#2e7d32", "#00838f", "#c0ca33", "#6d4c41")
OTHER_COLOUR = "#9e9e9e"
COMPILED_HATCH = "//"


def colour_of(framework: str) -> str:
    """The framework's colour, the same in every chart of every run (grey for one no engine row names)."""
    if framework in FRAMEWORK_COLOURS:
        return FRAMEWORK_COLOURS[framework]
    generic = list(dict.fromkeys(e.framework for e in ENGINES.values() if e.generic))
    index = generic.index(framework) if framework in generic else len(GENERIC_COLOURS)
    return GENERIC_COLOURS[index] if index < len(GENERIC_COLOURS) else OTHER_COLOUR


def available() -> bool:
    """Whether matplotlib is installed (checked without importing it)."""
    return importlib.util.find_spec("matplotlib") is not None


def require() -> None:
    """``ImportError`` naming the extra to install if matplotlib is missing."""
    if not available():
        raise ImportError("charts need matplotlib, which is not installed; install it with: "
                          "pip install 'llmdual[report]'")


def _figure(**options: Any) -> Any:
    require()
    from matplotlib.figure import Figure

    return Figure(**options)


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: FigureCanvasAgg(fig).print_png(tmp))


def _hatch(engine: str) -> str:
    return COMPILED_HATCH if engine in ENGINES and ENGINES[engine].needs else ""


def _legend(ax: Any, cases: list[dict[str, Any]], title: str) -> None:
    """Framework colours, plus the hatch's meaning when a hatched engine is drawn."""
    handles = [_patch(facecolor=colour_of(fw), label=fw)
               for fw in sorted({c["framework"] for c in cases})]
    needs = sorted({ENGINES[c["engine"]].needs for c in cases if _hatch(c["engine"])})
    if needs:
        handles.append(_patch(facecolor="white", edgecolor="black", hatch=COMPILED_HATCH, label=" / ".join(needs)))
    ax.legend(handles=handles, fontsize="small", title=title, title_fontsize="small", loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # beside the axes: never over a bar


def _draw(ax: Any, cases: list[dict[str, Any]], values: list[float], ylabel: str, title: str, legend: str,
          errors: list[list[float]] | None = None) -> None:
    """One bar per engine, coloured by framework and hatched where it needs a non-default setting."""
    ax.bar(range(len(cases)), values, yerr=errors, capsize=4 if errors else 0, edgecolor="black", linewidth=0.5,
           color=[colour_of(c["framework"]) for c in cases],
           hatch=[_hatch(c["engine"]) for c in cases])
    ax.set_xticks(range(len(cases)), [c["engine"] for c in cases], rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    _legend(ax, cases, legend)


def _bars(ax: Any, cases: list[dict[str, Any]], metric: str, title: str) -> None:
    """Median per engine with its 95% interval; title and y label name ``metric``."""
    stats = [c["stats"][metric] for c in cases]
    medians = [s["median"] for s in stats]
    errors = [[m - s["ci_low"] for m, s in zip(medians, stats)], [s["ci_high"] - m for m, s in zip(medians, stats)]]
    label = metric_of(metric)
    _draw(ax, cases, medians, f"{label.label} ({label.unit})", title, "median, 95% CI", errors)


def _caption(doc: dict[str, Any], point: dict[str, Any]) -> str:
    """What a chart measured: preset, batch, sequence, device, precision and threads."""
    settings, threads = doc["settings"], doc["env"].get("threads")
    parts = [f"{settings['preset']}" if settings.get("preset") else None,
             f"batch {point['batch_size']}" if "batch_size" in point else None,
             f"seq {point['seq_len']}" if "seq_len" in point else None,
             " ".join(str(point[k]) for k in ("device", "dtype") if k in point) or None,
             f"{threads} threads" if threads else None]
    return ", ".join(p for p in parts if p)


def _panels(doc: dict[str, Any], groups: list[dict[str, Any]], name: str, title: Any, out_dir: Path) -> Path:
    """One PNG of bar panels, one per summary group; ``title(group)`` names each panel's metric."""
    widest = max(len(g["entries"]) for g in groups)
    fig = _figure(figsize=(max(5.0, 2.0 + 1.2 * widest) * len(groups), 4.8))
    for ax, group in zip(fig.subplots(1, len(groups), squeeze=False)[0], groups):
        cases = [doc["cases"][e["case"]] for e in group["entries"]]
        _bars(ax, cases, group["metric"], f"{title(group)}\n{_caption(doc, group['point'])}")
    fig.tight_layout()
    return _save(fig, out_dir / f"{name}.png")


def _groups(doc: dict[str, Any], metrics: tuple[str, ...], workload: str | None = None) -> list[dict[str, Any]]:
    return [g for g in doc["summary"]["groups"] if g["metric"] in metrics and workload in (None, g["workload"])]


def plot_throughput(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG per workload: the headline metric per engine (median, 95% CI error bars), one panel per point."""
    paths = []
    for workload in WORKLOADS:
        groups = _groups(doc, (WORKLOAD_METRICS[workload][0],), workload)
        if groups:
            paths.append(_panels(doc, groups, f"throughput_{workload}",
                                 lambda g: f"{g['workload']}: {metric_of(g['metric']).label}", out_dir))
    return paths


def plot_costs(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Peak memory and warm-up/compilation time per engine, a panel per workload and point; generation latency
    (per-token p50 and p99, time to first token) where generation ran."""
    paths = []
    for name, metrics in (("memory", MEMORY_METRICS), ("warmup", ("warmup_s",))):
        groups = _groups(doc, metrics)
        if groups:
            paths.append(_panels(doc, groups, name, lambda g: f"{g['workload']}: {metric_of(g['metric']).label}",
                                 out_dir))
    latency = _groups(doc, ("token_latency_s",), "generate")
    for group in latency:
        cases = [doc["cases"][e["case"]] for e in group["entries"]]
        fig = _figure(figsize=(max(5.0, 2.0 + 1.2 * len(cases)) * 3, 4.8))
        panels = [("token_latency_s", "p50", "streamed per-token latency p50"), ("token_latency_s", "p99",
                  "streamed per-token latency p99"), ("ttft_s", "median", "time to first token")]
        for ax, (metric, stat, label) in zip(fig.subplots(1, 3), panels):
            having = [c for c in cases if metric in c["stats"]]
            _draw(ax, having, [c["stats"][metric][stat] for c in having], f"{label} (s)",
                  f"generate: {label}\n{_caption(doc, group['point'])}", "lower is better")
        fig.tight_layout()
        point = group["point"]
        suffix = "" if len(latency) == 1 else f"_b{point.get('batch_size')}_t{point.get('seq_len')}"
        paths.append(_save(fig, out_dir / f"latency_generate{suffix}.png"))
    return paths


def plot_sweeps(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Headline metric against batch size or sequence length, one line per engine, where a sweep was run."""
    paths = []
    for workload in WORKLOADS:
        metric = WORKLOAD_METRICS[workload][0]
        groups = [g for g in doc["summary"]["groups"] if g["workload"] == workload and g["metric"] == metric]
        for axis in (k for k in ("batch_size", "seq_len") if k in varying([g["point"] for g in groups])):
            series: dict[str, list[tuple[float, dict[str, Any]]]] = {}
            others = [k for k in varying([g["point"] for g in groups]) if k != axis]
            for group in groups:
                for entry in group["entries"]:
                    label = entry["engine"] + (f" ({point_label(group['point'], others)})" if others else "")
                    series.setdefault(label, []).append((group["point"][axis], doc["cases"][entry["case"]]))
            fig = _figure(figsize=(7, 4.5))
            ax = fig.subplots()
            for label, points in sorted(series.items()):
                points.sort(key=lambda xc: xc[0])
                xs, st = [x for x, _ in points], [c["stats"][metric] for _, c in points]
                ys, first = [s["median"] for s in st], points[0][1]
                ax.errorbar(xs, ys, yerr=[[y - s["ci_low"] for y, s in zip(ys, st)],
                                          [s["ci_high"] - y for y, s in zip(ys, st)]],
                            marker="o", capsize=3, label=label,
                            color=colour_of(first["framework"]),
                            linestyle="--" if _hatch(first["engine"]) else "-")
            ax.set_xscale("log", base=2)
            ax.set_xlabel(axis)
            ax.set_ylabel(f"{metric_of(metric).label} ({metric_of(metric).unit})")
            ax.set_title(f"{workload}: {metric_of(metric).label} vs {axis}")
            ax.legend(fontsize="small")
            fig.tight_layout()
            paths.append(_save(fig, out_dir / f"sweep_{workload}_{axis}.png"))
    return paths


def _patch(**options: Any) -> Any:
    from matplotlib.patches import Patch

    return Patch(**options)


def write_charts(doc: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Throughput bars per workload, memory, warm-up and generation latency and, where a sweep ran, lines over
    batch size or sequence length."""
    return plot_throughput(doc, Path(out_dir)) + plot_costs(doc, Path(out_dir)) + plot_sweeps(doc, Path(out_dir))
