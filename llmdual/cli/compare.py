"""``llmdual compare ...``: forwards every argument to ``benchmarks/compare.py`` in a source checkout."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from llmdual.cli.common import CliError


def script() -> Path:
    """``benchmarks/compare.py`` of the checkout this package runs from."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "compare.py"
    if not path.is_file():
        raise CliError(f"llmdual compare runs benchmarks/compare.py from a source checkout; {path} is missing")
    return path


def forward(argv: list[str]) -> int:
    """Run ``python benchmarks/compare.py *argv``; its exit status."""
    return subprocess.call([sys.executable, str(script()), *argv])


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", add_help=False, help="benchmark every engine (benchmarks/compare.py; "
                       "`llmdual compare --help` lists its options)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: forward(args.args))
