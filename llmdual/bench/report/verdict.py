"""The verdict of a results document: per workload and point, which framework wins each figure (throughput,
memory, warm-up and compilation) by how much, or that the difference is noise; the settings a winner needs
beside its default-settings result; and the precision and scale the verdict holds for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmdual.bench.engines.table import ENGINES, is_quantized, is_reference
from llmdual.bench.report import stats
from llmdual.bench.report.results import WORKLOAD_METRICS, WORKLOADS
from llmdual.bench.report.units import format_value, metric_of, point_label, varying
from llmdual.core.config import Config

MEMORY_METRICS = ("peak_device_mb", "peak_rss_mb")
# The lead a win needs, by figure (headline, memory, warm-up): the ratio's 95% interval must clear it, not only 1.
# An interval covers one run's repeats, not what moves between runs: over seven default runs on a 2-core CPU the
# train ratio of the same two engines read 1.01-1.14 (each engine moving by up to 9%), one engine's warm-up
# (torch.compile) moved 1.7x, and peak memory of the same run layout repeated within 3%. A lead inside these is
# called noise, so back-to-back verdicts agree.
MARGINS = (1.15, 1.10, 1.5)
# Which workloads each stated priority puts first and tallies, and whether it is decided on memory.
PRIORITIES: dict[str, tuple[str, ...]] = {
    "training": ("train",),
    "inference": ("infer", "classify"),
    "generation": ("generate",),
    "memory": WORKLOADS,
}


def _kind(metric: str) -> int:
    """Order of the figures within a workload: headline first, then memory, then warm-up."""
    return 2 if metric == "warmup_s" else 1 if metric in MEMORY_METRICS else 0


def groups_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary groups a verdict is about: llmdual's float engines only (int8 ones have their own table), on the
    headline, memory and warm-up figures."""
    out = []
    for group in doc["summary"]["groups"]:
        if group["metric"] not in (WORKLOAD_METRICS[group["workload"]][0], *MEMORY_METRICS, "warmup_s"):
            continue
        entries = [e for e in group["entries"] if not is_reference(e["engine"]) and not is_quantized(e["engine"])]
        if entries:
            out.append({**group, "entries": entries})
    return out


def _ratio(doc: dict[str, Any], mine: dict[str, Any], other: dict[str, Any], metric: str, higher: bool
           ) -> stats.Ratio:
    """How many times better ``mine`` is than ``other`` on ``metric`` (ratio of medians with its interval)."""
    a, b = (doc["cases"][e["case"]]["measurements"][metric] for e in (mine, other))
    return stats.ratio_of_medians(*((a, b) if higher else (b, a)), seed=int(doc["settings"].get("seed", 0)))


def _defaults_note(doc: dict[str, Any], group: dict[str, Any], best: dict[str, Any], rival: dict[str, Any]) -> str:
    """What the winner's non-default setting buys: its default-settings engine's result against the same rival."""
    engine = ENGINES.get(best["engine"])
    if engine is None or not engine.needs:
        return ""
    default = next((e for e in group["entries"] if e["engine"] == engine.default), None)
    if default is None:
        return (f" {best['engine']} needs `{engine.needs}`; {engine.default}, its default settings, was not "
                "measured here.")
    r = _ratio(doc, default, rival, group["metric"], group["higher_is_better"])
    return (f" {best['engine']} needs `{engine.needs}`: with default settings ({engine.default}, "
            f"{format_value(default['median'], metric_of(group['metric']).unit)}) it is {r.ratio:.2f}× "
            f"(95% CI {r.low:.2f}–{r.high:.2f}×) of {rival['framework']}"
            + (", within noise." if r.within_noise else "."))


def decide(doc: dict[str, Any], group: dict[str, Any], keys: Sequence[str]) -> tuple[str, str | None]:
    """One verdict bullet for a group, and the winning framework (None when nothing was compared or it is noise)."""
    metric, entries = metric_of(group["metric"]), group["entries"]
    where = f"**{group['workload']}**" + (f" ({point_label(group['point'], keys)})" if keys else "")
    head, best = f"- {where}, {metric.label}: ", entries[0]
    rival = next((e for e in entries if e["framework"] != best["framework"]), None)
    if rival is None:
        return head + f"only {best['framework']} ran ({best['engine']}); nothing to compare.", None
    r = _ratio(doc, best, rival, group["metric"], group["higher_is_better"])
    figures = (f"{best['engine']} {format_value(best['median'], metric.unit)} vs {rival['engine']} "
               f"{format_value(rival['median'], metric.unit)}")
    interval = f"{r.ratio:.2f}× (95% CI {r.low:.2f}–{r.high:.2f}×)"
    caveat = " One measurement each, so the interval is degenerate." if min(best["n"], rival["n"]) < 2 else ""
    margin = MARGINS[_kind(group["metric"])]
    if r.low < margin:
        short = "contains 1" if r.within_noise else f"does not clear the {margin:.2f}× a win needs here"
        return (head + f"within noise: {best['framework']} and {rival['framework']} differ by {interval}, an "
                f"interval that {short}, so neither wins ({figures})." + _defaults_note(doc, group, best, rival)
                + caveat), None
    better = "better" if group["metric"] == "warmup_s" else "higher" if group["higher_is_better"] else "lower"
    text = (f"**{best['framework']}** wins: {interval} {better} {metric.label} than {rival['framework']}, "
            f"the next framework ({figures}).")
    return head + text + _defaults_note(doc, group, best, rival) + caveat, best["framework"]


def _priority_first(priority: str, group: dict[str, Any]) -> tuple[int, int, int]:
    memory = priority == "memory"
    first = (group["metric"] in MEMORY_METRICS) if memory else group["workload"] in PRIORITIES[priority]
    return (not first, WORKLOADS.index(group["workload"]), _kind(group["metric"]))


def _counts(priority: str, group: dict[str, Any]) -> bool:
    """Whether a group is tallied for ``priority``: its workloads' headline figure, or memory for ``memory``."""
    if priority == "memory":
        return group["metric"] in MEMORY_METRICS
    return group["workload"] in PRIORITIES[priority] and _kind(group["metric"]) == 0


def winners(doc: dict[str, Any]) -> dict[str, str]:
    """Each comparison's outcome by ``workload point metric``: the winning framework, ``noise`` or ``alone``;
    two runs agree on their verdict when these are equal."""
    groups, out = groups_of(doc), {}
    for group in groups:
        keys = varying([g["point"] for g in groups if g["workload"] == group["workload"]])
        line, winner = decide(doc, group, keys)
        outcome = winner or ("alone" if "nothing to compare" in line else "noise")
        out[f"{group['workload']} {point_label(group['point'], keys)} {group['metric']}".replace("  ", " ")] = outcome
    return out


def caveats(doc: dict[str, Any]) -> list[str]:
    """The precision and scale the verdict holds for, in plain words."""
    env, settings = doc["env"], doc["settings"]
    points = [c["settings"] for c in doc["cases"] if c["status"] == "ok"]
    dtypes = sorted({p.get("dtype", "float32") for p in points})
    bf16 = env.get("cpu_bf16") or []
    native = f"; this CPU computes bf16 natively ({', '.join(bf16)})" if bf16 else ""
    if len(dtypes) == 1:
        precision = (f"- Precision: every figure is {dtypes[0]}. Rankings can change with precision{native}: "
                     "measure `--precision bf16` (or fp16 on a GPU) before deciding on it.")
    else:
        precision = f"- Precision: measured at {', '.join(dtypes)}; each line above names its precision."
    size = ""
    if isinstance(settings.get("config"), dict):
        size = f" ({Config.from_dict(settings['config']).parameter_count():,} parameters)"
    shapes = sorted({(p["batch_size"], p["seq_len"]) for p in points if "batch_size" in p and "seq_len" in p})
    at = ", ".join(f"batch {b} × {t}" for b, t in shapes) or "the measured shapes"
    device = "a GPU" if env.get("gpus") else f"{env.get('cpu_model', 'this CPU')}"
    scale = (f"- Scale: this verdict holds for {device} with {env.get('threads') or 'default'} threads and the "
             f"{settings.get('preset', 'given')} model{size} at {at}. Model size, batch, sequence length, precision "
             "and device can change the ranking: see `--sweep`, `--precision bf16` and `--device cuda`.")
    return [precision, scale]


def verdict(doc: dict[str, Any], priority: str) -> list[str]:
    """Markdown bullets: every comparison (the priority's first), a tally for the priority, what was not compared,
    and the precision and scale caveats."""
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}; choose one of {sorted(PRIORITIES)}")
    groups = sorted(groups_of(doc), key=lambda g: _priority_first(priority, g))
    lines, wins, noise, counted = [], {}, 0, 0
    for group in groups:
        keys = varying([g["point"] for g in groups if g["workload"] == group["workload"]])
        line, winner = decide(doc, group, keys)
        lines.append(line)
        if _counts(priority, group) and "nothing to compare" not in line:
            counted += 1
            noise += winner is None
            if winner:
                wins[winner] = wins.get(winner, 0) + 1
    if wins:
        tally = ", ".join(f"{fw} {n}" for fw, n in sorted(wins.items(), key=lambda kv: -kv[1]))
        lines.append(f"- Overall for {priority}: clear wins by framework: {tally}; within noise: {noise} "
                     f"of {counted} comparisons.")
    elif noise:
        lines.append(f"- Overall for {priority}: no framework is ahead beyond noise on this data.")
    elif not any(_counts(priority, g) for g in groups):
        lines.append(f"- No successful cases for {priority}: nothing to decide on.")
    for case in doc["cases"]:
        # an engine that never runs a workload (its own reason, its backend's capabilities): the tables say why
        by_design = (case["reason"] or "").startswith(("not applicable", "not supported"))
        if case["status"] != "ok" and not by_design and not is_reference(case["engine"]):
            lines.append(f"- Not compared: {case['engine']} {case['workload']} was {case['status']} "
                         f"({(case['reason'] or '')[:160]}).")
    return lines + caveats(doc)
