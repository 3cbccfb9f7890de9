"""``python -m llmdual.parity``: print parity tables for a preset; exit 1 if any check fails."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from llmdual.contract import backends
from llmdual.core.config import PRESETS, Config
from llmdual.parity import GROUPS, checks_for, run


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print parity tables for a preset (both tasks by default); exit 1 if any check fails."""
    parser = argparse.ArgumentParser(prog="python -m llmdual.parity",
                                     description=f"Parity between the backends ({', '.join(backends())}).")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--task", choices=["lm", "classifier", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checks", default="all",
                        help=f"comma-separated check groups: {', '.join(GROUPS)}, or all (default)")
    parser.add_argument("--json", type=Path, help="also write the reports to this JSON file")
    args = parser.parse_args(argv)
    config = Config.preset(args.preset)
    tasks = ["lm", "classifier"] if args.task == "both" else [args.task]
    checks = checks_for(args.checks.split(","))
    reports = [run(config, task, args.seed, checks) for task in tasks]
    for report in reports:
        print(report.table(), end="\n\n")
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in reports], indent=2))
    return 0 if all(r.passed for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
