"""Pieces shared by the subcommands: errors, comma-separated ids, key=value overrides, sibling files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


class CliError(Exception):
    """Bad input a subcommand reports in one line."""


def existing_file(text: str) -> Path:
    """An argparse type: a path that must exist."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


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
