"""The verdict of a results document: per workload and point, which framework wins each figure (throughput,
memory, warm-up and compilation) by how much, or that the difference is noise; the settings a winner needs
beside its default-settings result; and the precision and scale the verdict holds for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmdual.bench.engines.table import ENGINES, is_quantized, is_reference
from llmdual.bench.report import hostload, stats
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


@dataclass(frozen=True)
class Outcome:
    """One comparison decided: its Markdown bullet; the winning framework (None: noise, withheld or alone), by how
    much over which rival and what the winner needs; or why it was withheld."""

    line: str
    best: str | None = None  # the framework ranked first, winner or not
    winner: str | None = None
    ratio: float | None = None
    rival: str | None = None
    needs: str = ""
    withheld: str = ""
    busy_engines: tuple[str, ...] = ()
    alone: bool = False


def _withheld(group: dict[str, Any], busy: Mapping[int, str]) -> str:
    """The busy cases among a group's engines, any of which may have lost its place to the load; none for memory,
    which other processes' CPU use does not move."""
    if group["metric"] in MEMORY_METRICS:
        return ""
    return "; ".join(busy[e["case"]] for e in group["entries"] if e["case"] in busy)


def outcome(doc: dict[str, Any], group: dict[str, Any], keys: Sequence[str], busy: Mapping[int, str] | None = None
            ) -> Outcome:
    """Decide one group: the winner and its lead, noise, or withheld when a case of it ran on a busy host
    (``busy``: reasons by case index, ``hostload.assess``)."""
    metric, entries = metric_of(group["metric"]), group["entries"]
    where = f"**{group['workload']}**" + (f" ({point_label(group['point'], keys)})" if keys else "")
    head, best = f"- {where}, {metric.label}: ", entries[0]
    rival = next((e for e in entries if e["framework"] != best["framework"]), None)
    if rival is None:
        return Outcome(head + f"only {best['framework']} ran ({best['engine']}); nothing to compare.",
                       best["framework"], alone=True)
    r = _ratio(doc, best, rival, group["metric"], group["higher_is_better"])
    figures = (f"{best['engine']} {format_value(best['median'], metric.unit)} vs {rival['engine']} "
               f"{format_value(rival['median'], metric.unit)}")
    interval = f"{r.ratio:.2f}× (95% CI {r.low:.2f}–{r.high:.2f}×)"
    withheld = _withheld(group, busy or {})
    if withheld:
        return Outcome(head + f"withheld: the host was busy during {withheld}, so no framework is declared the "
                       f"winner; measured {figures}, {interval}. Rerun on a quiet machine.", best["framework"],
                       ratio=r.ratio, rival=rival["framework"], withheld=withheld,
                       busy_engines=tuple(e["engine"] for e in entries if e["case"] in (busy or {})))
    caveat = " One measurement each, so the interval is degenerate." if min(best["n"], rival["n"]) < 2 else ""
    margin = MARGINS[_kind(group["metric"])]
    if r.low < margin:
        short = "contains 1" if r.within_noise else f"does not clear the {margin:.2f}× a win needs here"
        return Outcome(head + f"within noise: {best['framework']} and {rival['framework']} differ by {interval}, "
                       f"an interval that {short}, so neither wins ({figures})."
                       + _defaults_note(doc, group, best, rival) + caveat, best["framework"], ratio=r.ratio,
                       rival=rival["framework"])
    better = "better" if group["metric"] == "warmup_s" else "higher" if group["higher_is_better"] else "lower"
    text = (f"**{best['framework']}** wins: {interval} {better} {metric.label} than {rival['framework']}, "
            f"the next framework ({figures}).")
    engine = ENGINES.get(best["engine"])
    return Outcome(head + text + _defaults_note(doc, group, best, rival) + caveat, best["framework"],
                   best["framework"], r.ratio, rival["framework"], engine.needs if engine else "")


def decide(doc: dict[str, Any], group: dict[str, Any], keys: Sequence[str], busy: Mapping[int, str] | None = None
           ) -> tuple[str, str | None]:
    """One verdict bullet for a group, and the winning framework (None when nothing was compared, it is noise, or
    it was withheld)."""
    found = outcome(doc, group, keys, busy)
    return found.line, found.winner


def _priority_first(priority: str, group: dict[str, Any]) -> tuple[int, int, int]:
    memory = priority == "memory"
    first = (group["metric"] in MEMORY_METRICS) if memory else group["workload"] in PRIORITIES[priority]
    return (not first, WORKLOADS.index(group["workload"]), _kind(group["metric"]))


def tallied(priority: str, group: dict[str, Any]) -> bool:
    """Whether a group is tallied for ``priority``: its workloads' headline figure, or memory for ``memory``."""
    if priority == "memory":
        return group["metric"] in MEMORY_METRICS
    return group["workload"] in PRIORITIES[priority] and _kind(group["metric"]) == 0


def outcomes(doc: dict[str, Any]) -> list[tuple[dict[str, Any], Outcome]]:
    """Every group of the verdict with its outcome, busy-host cases withheld (``hostload.assess``)."""
    groups, busy = groups_of(doc), hostload.assess(doc).busy
    found = []
    for group in groups:
        keys = varying([g["point"] for g in groups if g["workload"] == group["workload"]])
        found.append((group, outcome(doc, group, keys, busy)))
    return found


def label_of(group: dict[str, Any], groups: Sequence[dict[str, Any]]) -> str:
    """``workload point metric``: a comparison's name, the point only where it varies."""
    keys = varying([g["point"] for g in groups if g["workload"] == group["workload"]])
    return f"{group['workload']} {point_label(group['point'], keys)} {group['metric']}".replace("  ", " ")


def winners(doc: dict[str, Any]) -> dict[str, str]:
    """Each comparison's outcome by ``workload point metric``: the winning framework, ``noise``, ``withheld`` (busy
    host) or ``alone``; two runs agree on their verdict when these are equal."""
    found = outcomes(doc)
    groups = [g for g, _ in found]
    return {label_of(g, groups): o.winner or ("alone" if o.alone else "withheld" if o.withheld else "noise")
            for g, o in found}


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


def host_line(doc: dict[str, Any]) -> list[str]:
    """What the host did during the run, and which comparisons that withheld (none for old documents)."""
    host = hostload.assess(doc)
    if not host.seen:
        return []
    if host.busy:
        return [(f"- Host: busy during {len(host.busy)} case(s), so the speed and warm-up comparisons they are part "
                f"of are withheld (memory is not moved by other processes' CPU use): "
                f"{'; '.join(host.busy.values())}. Over the run: {host.seen}. A case counts as busy when other "
                f"processes or steal took over {hostload.OTHERS_MAX:.0%} of its CPUs, or its calibration probe ran "
                f"over {hostload.PROBE_SLOWER_MAX:g}× slower than the run's median.")]
    return [f"- Host: quiet during every case ({host.seen})."]


def verdict(doc: dict[str, Any], priority: str) -> list[str]:
    """Markdown bullets: every comparison (the priority's first), a tally for the priority, what was not compared,
    the host's load, and the precision and scale caveats."""
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}; choose one of {sorted(PRIORITIES)}")
    found = sorted(outcomes(doc), key=lambda go: _priority_first(priority, go[0]))
    lines, wins, noise, withheld, counted = [], {}, 0, 0, 0
    for group, decided in found:
        lines.append(decided.line)
        if tallied(priority, group) and not decided.alone:
            counted += 1
            withheld += bool(decided.withheld)
            noise += decided.winner is None and not decided.withheld
            if decided.winner:
                wins[decided.winner] = wins.get(decided.winner, 0) + 1
    held = f"; withheld (busy host): {withheld}" if withheld else ""
    if wins:
        tally = ", ".join(f"{fw} {n}" for fw, n in sorted(wins.items(), key=lambda kv: -kv[1]))
        lines.append(f"- Overall for {priority}: clear wins by framework: {tally}; within noise: {noise}{held} "
                     f"of {counted} comparisons.")
    elif withheld:
        lines.append(f"- Overall for {priority}: no winner declared: {withheld} of {counted} comparisons withheld "
                     f"(busy host), {noise} within noise.")
    elif noise:
        lines.append(f"- Overall for {priority}: no framework is ahead beyond noise on this data.")
    elif not any(tallied(priority, g) for g, _ in found):
        lines.append(f"- No successful cases for {priority}: nothing to decide on.")
    for case in doc["cases"]:
        if not_compared(case):
            lines.append(f"- Not compared: {case['engine']} {case['workload']} was {case['status']} "
                         f"({(case['reason'] or '')[:160]}).")
    return lines + host_line(doc) + caveats(doc)


def not_compared(case: dict[str, Any]) -> bool:
    """A llmdual case that should have run and did not (an engine that never runs a workload, by its own reason or
    its backend's capabilities, is not one: the tables say why)."""
    by_design = (case["reason"] or "").startswith(("not applicable", "not supported"))
    return case["status"] != "ok" and not by_design and not is_reference(case["engine"])
