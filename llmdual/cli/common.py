"""Pieces shared by the subcommands: errors, the parser and help formatter, argument types (files to read and to
write, comma-separated ids, key=value overrides), sibling files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from llmdual.core.io import replaced_file


class CliError(Exception):
    """Bad input a subcommand reports in one line (exit status 1)."""


def usage_error(prog: str, message: str) -> NoReturn:
    """Report an argument error in one line on stderr and exit with status 2 (argparse's usage status)."""
    sys.stderr.write(f"{prog}: error: {' '.join(message.split())} (see {prog} --help)\n")
    raise SystemExit(2)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (the error and where help is), not the usage block."""

    def error(self, message: str) -> NoReturn:
        usage_error(self.prog, message)


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default once: not when the help text states it already, and not when there is
    none to show (``None``, or ``False`` for a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def existing_file(text: str) -> Path:
    """An argparse type: a path that must exist."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def output_path(text: str) -> Path:
    """An argparse type: a file or folder to write, checked before any work starts: its folder must exist and be
    writable, and an existing file there must be writable."""
    path = Path(text)
    try:
        target = replaced_file(path)  # a symlink's target gets the content
    except PermissionError as exc:  # a read-only file there
        raise argparse.ArgumentTypeError(str(exc)) from None
    folder = target.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: folder {folder} is not writable")
    return path


def output_file(text: str) -> Path:
    """An argparse type: ``output_path`` that must not be a folder."""
    path = output_path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: it is a folder; name a file in it")
    return path


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def id_list(text: str) -> list[int]:
    """An argparse type: comma-separated token ids."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("expected at least one token id")
    return ids


def key_value(text: str) -> tuple[str, Any]:
    """An argparse type: ``key=value``, the value parsed as JSON when it is JSON (numbers, true, null)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def sibling(checkpoint: Path, suffix: str) -> Path:
    """``model.safetensors`` -> ``model<suffix>`` next to it (e.g. ``.tokenizer.json``, ``.config.json``)."""
    return checkpoint.with_name(checkpoint.stem + suffix)


def tokenizer_path(checkpoint: Path, given: Path | None) -> Path | None:
    """The ``--tokenizer`` given, else the one ``llmdual train`` wrote next to the checkpoint, else None."""
    if given is not None:
        return given
    default = sibling(checkpoint, ".tokenizer.json")
    return default if default.is_file() else None
