"""Parity between the backends, as a library feature: run checks, get a report.

``python -m llmdual.parity --preset tiny`` prints the report as a table. Every check compares every pair of
backends offering what it checks, on the same canonical weights, and names the tolerance it was held to; the logits
of each backend are also held against the float64 reference (the backends offering ``reference``), in a group of
their own, so a difference between two backends shows which of them drifts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llmdual.core.config import Config
from llmdual.parity import data_parallel, lora, model, training
from llmdual.parity.core import Check, ParityContext, ParityReport, first_divergence, localise

# check group name -> checks, in the order they run (training builds on the model checks passing)
GROUPS: dict[str, list[Callable[[ParityContext], list[Check]]]] = {
    "model": model.CHECKS,
    "training": training.CHECKS,
    "lora": lora.CHECKS,
    "data-parallel": data_parallel.CHECKS,
}
# groups run only when named: "all" leaves them out (data-parallel launches a dozen multi-process runs)
OPT_IN = {"data-parallel"}


def checks_for(names: Sequence[str]) -> list[Callable[[ParityContext], list[Check]]]:
    """The checks of the named groups ("all" for every group but the opt-in ones), in registry order."""
    unknown = sorted(set(names) - set(GROUPS) - {"all"})
    if unknown:
        raise ValueError(f"unknown parity check group(s) {unknown}; choose from {['all', *GROUPS]}")
    return [c for group, checks in GROUPS.items()
            if group in names or ("all" in names and group not in OPT_IN) for c in checks]


def run(
    config: Config,
    task: str = "lm",
    seed: int = 0,
    checks: Sequence[Callable[[ParityContext], list[Check]]] | None = None,
) -> ParityReport:
    """Run parity checks (default: every group) for one config, task and seed; localise the first
    divergence of every pair (and of every backend against the reference) if logits differ."""
    ctx = ParityContext(config, task, seed)
    report = ParityReport(config, task, seed)
    for check in checks_for(["all"]) if checks is None else checks:
        report.checks.extend(check(ctx))
    localise(ctx, report)
    return report


__all__ = ["GROUPS", "Check", "ParityContext", "ParityReport", "checks_for", "first_divergence", "localise", "run"]
