"""The verdict as the last thing a run prints: one plain line per priority (winner, lead, what it needs), the
caveats of this run (busy host, noise, failures), and where the report and charts are. The intervals stay in the
tables and the report; this block is for reading at a glance, 100 columns wide."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmdual.bench.report import hostload
from llmdual.bench.report.units import metric_of, point_label, varying
from llmdual.bench.report.verdict import MARGINS, MEMORY_METRICS, PRIORITIES, Outcome, not_compared, outcomes, tallied

WIDTH = 100
LISTED = 3  # busy cases named one by one on screen; more are counted (the report names them all)


def phrase(group: dict[str, Any], found: Outcome) -> str:
    """One comparison in plain words."""
    if found.withheld:
        engines = len(group["entries"])
        who = (f"all {engines} engines' runs" if len(found.busy_engines) == engines > 2
               else ", ".join(found.busy_engines))
        return f"withheld: the host was busy during {who}"
    if found.winner:
        needs = f" (needs `{found.needs}`)" if found.needs else ""
        metric = metric_of(group["metric"])
        lead = (f"less {metric.label} than" if group["metric"] in MEMORY_METRICS
                else "faster than" if group["higher_is_better"] else f"lower {metric.label} than")
        return f"{found.winner} wins, {found.ratio:.2f}× {lead} {found.rival}{needs}"
    return f"no winner: {found.best} and {found.rival} are within noise ({found.ratio:.2f}×)"


def priority_line(priority: str, found: Sequence[tuple[dict[str, Any], Outcome]]) -> str:
    """What the run says for one priority: each of its comparisons in plain words, named where there are several."""
    mine = [(g, o) for g, o in found if tallied(priority, g) and not o.alone]
    if not mine:
        ran = any(tallied(priority, g) for g, _ in found)
        return "one framework only: nothing to compare" if ran else "not measured in this run"
    if len(mine) == 1:
        return phrase(*mine[0])
    groups = [g for g, _ in found]
    parts = []
    for group, decided in mine:
        keys = varying([g["point"] for g in groups if g["workload"] == group["workload"]])
        where = group["workload"] + (f" ({point_label(group['point'], keys)})" if keys else "")
        parts.append(f"{where}: {phrase(group, decided)}")
    return "; ".join(parts)


def caveats(doc: dict[str, Any], found: Sequence[tuple[dict[str, Any], Outcome]]) -> list[str]:
    """The caveats that apply to this run, in plain words."""
    out, host, settings = [], hostload.assess(doc), doc["settings"]
    if host.busy:
        which = ("; ".join(host.busy.values()) if len(host.busy) <= LISTED
                 else f"{len(host.busy)} of {len(hostload.measured(doc))} cases (the report names each and why)")
        out.append(f"The host was busy during {which}, so no speed winner is declared where they take part. "
                   "Rerun on a quiet machine.")
    if host.seen:
        out.append(f"Host over the run: {host.seen}.")
    noise = sum(o.winner is None and not o.withheld and not o.alone for _, o in found)
    if noise:
        out.append(f"{noise} comparison(s) within noise: a win needs a lead whose 95% interval clears "
                   f"{MARGINS[0]:.2f}× ({MARGINS[1]:.2f}× for memory).")
    rounds = int(settings.get("rounds", 1) or 1)
    if rounds < 2:
        out.append("One round of fresh processes: the intervals see the repeats within one process, not drift "
                   "between processes; --rounds 3 gives a firmer verdict.")
    failed = [f"{c['engine']} {c['workload']} ({c['status']})" for c in doc["cases"] if not_compared(c)]
    if failed:
        out.append(f"Not compared: {', '.join(failed)}; see the report for why.")
    return out


def block(doc: dict[str, Any], files: Sequence[Path | str] = ()) -> str:
    """The closing block: ``Verdict`` with a line per priority, ``Caveats``, ``Files``; no line over 100 columns."""
    found = outcomes(doc)
    width = max(len(p) for p in PRIORITIES) + 2
    lines = ["Verdict (intervals and details: the tables above and the report)"]
    for priority in PRIORITIES:
        lines += textwrap.wrap(priority_line(priority, found), WIDTH, initial_indent=f"  {priority:<{width}}",
                               subsequent_indent=" " * (width + 2), break_on_hyphens=False)
    notes = caveats(doc, found)
    if notes:
        lines.append("Caveats")
        for note in notes:
            lines += textwrap.wrap(note, WIDTH, initial_indent="  - ", subsequent_indent="    ",
                                   break_on_hyphens=False)
    if files:
        lines.append("Files")
        lines += [f"  {f}" for f in files]
    return "\n".join(lines)
