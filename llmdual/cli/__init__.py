"""The ``llmdual`` command: compare, parity, train, generate, evaluate, export and serve as subcommands.

Every subcommand answers ``--help``; bad input ends in a one-line error on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from llmdual.cli import compare, models, parity, serve, train
from llmdual.cli.common import CliError

COMMANDS = (compare, parity, train, models, serve)


def parser() -> argparse.ArgumentParser:
    """The ``llmdual`` argument parser with every subcommand."""
    p = argparse.ArgumentParser(prog="llmdual", description="The same GPT-2-style transformer in PyTorch and "
                                "Keras 3: benchmark, check parity, train, generate, evaluate, export, serve.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; its exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":  # everything after it belongs to benchmarks/compare.py, --help included
        return _guard("compare", lambda: compare.run(argv[1:]))
    args = parser().parse_args(argv)
    return _guard(args.command, lambda: args.func(args))


def _guard(command: str, run) -> int:
    try:
        return int(run() or 0)
    except KeyboardInterrupt:
        print(f"llmdual {command}: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, TypeError, FileNotFoundError, OSError, RuntimeError, ImportError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"llmdual {command}: error: {message}", file=sys.stderr)
        return 1
