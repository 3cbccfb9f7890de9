"""``llmdual parity``: the parity checks for a preset or a user's own model file, as tables, JSON or JUnit XML."""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from llmdual.cli.common import Help, existing_file, output_file


def junit(reports: list) -> str:
    """JUnit XML: one test suite per task, one test case per check, a failure for each failed check."""
    root = ET.Element("testsuites", name="llmdual.parity")
    for report in reports:
        failed = [c for c in report.checks if not c.passed]
        suite = ET.SubElement(root, "testsuite", name=f"parity.{report.task}", tests=str(len(report.checks)),
                              failures=str(len(failed)), errors="0", skipped="0")
        for check in report.checks:
            case = ET.SubElement(suite, "testcase", classname=f"parity.{report.task}", name=check.name)
            if not check.passed:
                failure = ET.SubElement(case, "failure", message=f"max abs {check.max_abs:.3g}, max rel "
                                        f"{check.max_rel:.3g} > tolerance {check.tolerance:.3g}")
                failure.text = check.detail or None
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def checkpoint_report(path: Path, seed: int, checks: list):
    """The checks on a model file's config, task and weights (loaded into every backend that runs models)."""
    from llmdual.api import load, read_model
    from llmdual.contract import backends
    from llmdual.parity import ParityContext, ParityReport, localise

    config, task, _ = read_model(path)
    ctx = ParityContext(config, task, seed)
    ctx.models = {b: load(path, b) for b in backends("forward")}
    report = ParityReport(config, task, seed)
    for check in checks:
        report.checks.extend(check(ctx))
    localise(ctx, report)
    return report


def run(args: argparse.Namespace) -> int:
    from llmdual.core.config import Config
    from llmdual.parity import checks_for
    from llmdual.parity import run as run_parity

    checks = checks_for(args.checks.split(","))
    if args.checkpoint is not None:
        reports = [checkpoint_report(args.checkpoint, args.seed, checks)]
    else:
        config = Config.preset(args.preset)
        tasks = ["lm", "classifier"] if args.task == "both" else [args.task]
        reports = [run_parity(config, task, args.seed, checks) for task in tasks]
    for report in reports:
        print(report.table(), end="\n\n")
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in reports], indent=2))
    if args.junit:
        args.junit.write_text(junit(reports))
    failed = [f"{r.task}: {c.name}" for r in reports for c in r.checks if not c.passed]
    if failed:
        print(f"parity: {len(failed)} check(s) failed: {', '.join(failed)}")
    return 1 if failed else 0


def add(sub: argparse._SubParsersAction) -> None:
    from llmdual.contract import backends
    from llmdual.core.config import PRESETS
    from llmdual.parity import GROUPS

    names = ", ".join(backends())
    p = sub.add_parser("parity", help=f"check that the backends ({names}) compute the same numbers",
                       description=f"Parity checks between every pair of backends ({names}), and of each against "
                       "the float64 reference; exit 1 if any fails.",
                       formatter_class=Help)
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model size to check")
    p.add_argument("--task", choices=["lm", "classifier", "both"], default="both", help="the model heads to check")
    p.add_argument("--checkpoint", type=existing_file, metavar="PATH",
                   help="check this model file's config, task and weights instead of a preset")
    p.add_argument("--seed", type=int, default=0, help="weights and inputs")
    p.add_argument("--checks", default="all", help=f"comma-separated check groups: {', '.join(GROUPS)}, or all")
    p.add_argument("--json", type=output_file, metavar="PATH", help="also write the reports as JSON")
    p.add_argument("--junit", type=output_file, metavar="PATH", help="also write JUnit XML (one test case per check)")
    p.set_defaults(func=run)
