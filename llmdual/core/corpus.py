"""The built-in corpus: the running Python's own standard-library source, and the tasks made from it (LM blocks
and which-stdlib-package classification). Nothing is downloaded."""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmdual.core.data import ClassificationDataset, LMDataset, check_int, token_stream
from llmdual.core.tokenizer import Tokenizer, read_text

TEST_DIRS = frozenset({"test", "tests", "idle_test"})

STDLIB_PACKAGES = ("asyncio", "email", "multiprocessing", "xml")


def stdlib_dir() -> Path:
    """The running Python's standard-library source folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_sources(root: Path) -> list[Path]:
    """``.py`` files under ``root``, sorted by relative path, outside ``site-packages`` and test folders."""
    skip = TEST_DIRS | {"site-packages", "dist-packages", "__pycache__"}
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        found += [Path(folder) / name for name in files if name.endswith(".py")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def default_corpus_files(limit: int | None = None) -> list[Path]:
    """The standard library's own ``.py`` sources (first ``limit`` in sorted order): a corpus every Python has.

    Test folders (``test``, ``tests``, ``idle_test``) are skipped: they hold deliberately odd or generated files
    and some distributions strip them, which would make the corpus differ between machines.
    """
    if limit is not None:
        check_int("limit", limit, 1)
    files = _stdlib_sources(stdlib_dir())
    if not files:
        raise FileNotFoundError(f"no .py files under {stdlib_dir()}: this Python ships without standard-library "
                                "sources; pass your own corpus")
    return files[:limit]


def stdlib_classification(
    n_per_class: int = 500,
    snippet_lines: int = 8,
    packages: Sequence[str] = STDLIB_PACKAGES,
    seed: int = 0,
) -> tuple[list[str], list[int], list[str]]:
    """A built-in task: which stdlib package a code snippet comes from. Returns ``(texts, labels, label_names)``.

    Each package's sources (tests excluded) are cut into non-overlapping ``snippet_lines``-line chunks, so no
    text is shared between examples; chunks that are mostly blank or spell out the package name (which would
    give the label away) are dropped. ``n_per_class`` chunks per package are drawn with a seeded Generator, so
    classes are balanced (majority baseline ``1 / len(packages)``); the examples come shuffled.
    """
    check_int("n_per_class", n_per_class, 1)
    check_int("snippet_lines", snippet_lines, 1)
    check_int("seed", seed, 0)
    if isinstance(packages, str) or len(packages) < 2 or len(set(packages)) != len(packages):
        raise ValueError(f"packages must be a sequence of at least 2 distinct names, got {packages!r}")
    root = stdlib_dir()
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    labels: list[int] = []
    for label, package in enumerate(packages):
        files = _stdlib_sources(root / package) if (root / package).is_dir() else []
        if not files:
            available = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
            raise ValueError(f"no stdlib package {package!r} with sources in {root}; available: {available}")
        chunks = []
        for path in files:
            lines = read_text(path).splitlines()
            for i in range(0, len(lines) - snippet_lines + 1, snippet_lines):
                chunk = lines[i : i + snippet_lines]
                text = "\n".join(chunk)
                if sum(bool(line.strip()) for line in chunk) * 2 >= snippet_lines and package not in text:
                    chunks.append(text)
        if len(chunks) < n_per_class:
            raise ValueError(f"package {package!r} has only {len(chunks)} usable {snippet_lines}-line snippets; "
                             f"ask for n_per_class <= {len(chunks)}")
        texts += [chunks[i] for i in rng.choice(len(chunks), size=n_per_class, replace=False)]
        labels += [label] * n_per_class
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], [labels[i] for i in order], list(packages)


def stdlib_lm_data(vocab_size: int, block_size: int, files: int | None = 300,
                   seed: int = 0) -> tuple[Tokenizer, LMDataset]:
    """A byte-level BPE trained on ``files`` standard-library sources drawn at random (seeded), and LM blocks
    over them. Drawing, not taking the first in sorted order, makes the validation tail (the last files of the
    stream) a sample like the rest rather than one package."""
    every = default_corpus_files()
    order = np.random.default_rng(seed).permutation(len(every))[:files]
    sources = [every[i] for i in order]
    tokenizer = Tokenizer.train(sources, vocab_size)
    tokens = token_stream(tokenizer, sources)
    return tokenizer, LMDataset(tokens, block_size, seed=seed, vocab_size=tokenizer.vocab_size)


def stdlib_classification_data(vocab_size: int, max_len: int, n_per_class: int = 500,
                               seed: int = 0) -> tuple[Tokenizer, ClassificationDataset]:
    """The built-in classification task (which stdlib package a snippet comes from) and its tokenizer, trained
    on the training snippets only."""
    texts, labels, names = stdlib_classification(n_per_class, seed=seed)
    tokenizer = Tokenizer.train(texts, vocab_size)
    return tokenizer, ClassificationDataset(texts, labels, tokenizer, max_len, seed=seed, label_names=names)
