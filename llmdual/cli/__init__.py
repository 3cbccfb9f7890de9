"""The ``llmdual`` command: compare, parity, train, generate, evaluate, export and serve as subcommands.

Every subcommand answers ``--help``. A mistake ends in one line on stderr naming the argument: exit status 2 for
an argument the parser refuses, 1 for input refused at run time. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from llmdual.cli import compare, models, parity, serve, train
from llmdual.cli.common import CliError, Help, Parser

COMMANDS = (compare, parity, train, models, serve)
# What a user's input or environment raises (a bad value or file, a missing package); anything else is reported
# as unexpected, with a pointer to --debug for its traceback.
USER_ERRORS = (CliError, ValueError, OSError, ImportError)
DEBUG_HELP = "on an error, show its traceback rather than one line"


def parser() -> argparse.ArgumentParser:
    """The ``llmdual`` argument parser with every subcommand."""
    p = Parser(prog="llmdual", formatter_class=Help, description="The same GPT-2-style transformer in PyTorch "
               "and Keras 3: benchmark, check parity, train, generate, evaluate, export, serve.")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add(sub)
    for name, command in sub.choices.items():
        command.formatter_class = Help  # each default shown once, and none where there is none
        command.set_defaults(parser=command)  # to report unknown options
        if name != "compare":  # everything after compare is the benchmark's
            # SUPPRESS: a subcommand's own default must not undo ``llmdual --debug <command>``
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; its exit status (``SystemExit`` from argparse for ``--help``, 0, and for an argument
    error, 2, reported in one line)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    argv = list(sys.argv[1:] if argv is None else argv)
    head = argv[: argv.index("compare")] if "compare" in argv else None
    if head is not None and set(head) <= {"--debug"}:  # the rest, --help included, is the benchmark's
        return _guard("compare", lambda: compare.run(argv[len(head) + 1:]), debug=bool(head))
    args, unknown = parser().parse_known_args(argv)
    if unknown:  # argparse would report them as the top level's; the subcommand's help is the one to read
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return _guard(args.command, lambda: args.func(args), args.debug)


def _guard(command: str, run: Callable[[], int | None], debug: bool) -> int:
    """``run()``'s exit status; an error becomes one line on stderr and status 1 (re-raised with ``debug``)."""
    try:
        return int(run() or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"llmdual {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        if not isinstance(exc, USER_ERRORS):
            message = (f"unexpected {type(exc).__name__}: {message} (rerun as llmdual --debug {command} ... for "
                       f"the traceback)")
        print(f"llmdual {command}: error: {message}", file=sys.stderr)
        return 1
