"""``llmdual compare ...``: registers the benchmark's command line, ``llmdual.bench.command.main`` (also
``benchmarks/compare.py``), and hands it everything after ``compare``."""

from __future__ import annotations

import argparse

from llmdual.cli.common import usage_error

PROG = "llmdual compare"


def run(argv: list[str]) -> int:
    """Run the benchmark with ``argv``; its exit status (the bench is imported only when it runs)."""
    from llmdual.bench.command import main, parser

    check = parser(PROG)
    check.error = lambda message: usage_error(PROG, message)  # one line, as every llmdual subcommand's
    check.parse_args(argv)  # refuses bad options (and answers --help) before the benchmark starts
    return main(argv, prog=PROG)


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", add_help=False, help="benchmark every engine (`llmdual compare --help` lists "
                       "its options; also benchmarks/compare.py)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: run(args.args))
