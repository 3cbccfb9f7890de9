"""PNG charts of a results document (matplotlib, from the ``report`` extra, imported only when a chart is drawn)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from llmdual.bench.report import metric_of, point_label, varying
from llmdual.bench.results import WORKLOAD_METRICS, WORKLOADS
from llmdual.io import atomic_write


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


def _colors(doc: dict[str, Any]) -> dict[str, str]:
    frameworks = sorted({c["framework"] for c in doc["cases"]})
    return {fw: f"C{i % 10}" for i, fw in enumerate(frameworks)}


def _caption(doc: dict[str, Any], point: dict[str, Any]) -> str:
    """What a chart measured: preset, batch, sequence, device, precision and threads."""
    settings, threads = doc["settings"], doc["env"].get("threads")
    parts = [f"{settings['preset']}" if settings.get("preset") else None,
             f"batch {point['batch_size']}" if "batch_size" in point else None,
             f"seq {point['seq_len']}" if "seq_len" in point else None,
             " ".join(str(point[k]) for k in ("device", "dtype") if k in point) or None,
             f"{threads} threads" if threads else None]
    return ", ".join(p for p in parts if p)


def plot_throughput(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG per workload: the headline metric per engine (median, 95% CI error bars), one panel per point."""
    colors, paths = _colors(doc), []
    for workload in WORKLOADS:
        metric = WORKLOAD_METRICS[workload][0]
        groups = [g for g in doc["summary"]["groups"] if g["workload"] == workload and g["metric"] == metric]
        if not groups:
            continue
        fig = _figure(figsize=(max(5.0, 2.0 + 1.2 * max(len(g["entries"]) for g in groups)) * len(groups), 4.5))
        for ax, group in zip(fig.subplots(1, len(groups), squeeze=False)[0], groups):
            cases = [doc["cases"][e["case"]] for e in group["entries"]]
            medians = [c["stats"][metric]["median"] for c in cases]
            errors = [[m - c["stats"][metric]["ci_low"] for m, c in zip(medians, cases)],
                      [c["stats"][metric]["ci_high"] - m for m, c in zip(medians, cases)]]
            ax.bar(range(len(cases)), medians, yerr=errors, capsize=4, color=[colors[c["framework"]] for c in cases])
            ax.set_xticks(range(len(cases)), [c["engine"] for c in cases], rotation=30, ha="right")
            ax.set_ylabel(f"{metric_of(metric).label} ({metric_of(metric).unit})")
            ax.set_title(f"{workload}: {_caption(doc, group['point'])}", fontsize="medium")
            frameworks = sorted({c["framework"] for c in cases})
            ax.legend(handles=[_patch(color=colors[fw], label=fw) for fw in frameworks], fontsize="small",
                      title="median, 95% CI", title_fontsize="small")
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"throughput_{workload}.png"))
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
                ys = [s["median"] for s in st]
                ax.errorbar(xs, ys, yerr=[[y - s["ci_low"] for y, s in zip(ys, st)],
                                          [s["ci_high"] - y for y, s in zip(ys, st)]],
                            marker="o", capsize=3, label=label)
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
    """Throughput bars per workload and, where a sweep ran, lines over batch size or sequence length."""
    return plot_throughput(doc, Path(out_dir)) + plot_sweeps(doc, Path(out_dir))
