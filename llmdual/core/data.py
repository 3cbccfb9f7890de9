"""Framework-free data pipeline: token streams cached on disk and seeded numpy batches, identical for every backend.

Every batch is a pure function of ``(seed, split, step)``, so training can resume mid-run and see exactly the
batches it would have seen, whichever framework consumes them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from llmdual.core.io import atomic_write
from llmdual.core.tokenizer import Tokenizer, expand_sources, read_text

SPLITS = ("train", "val")
CACHE_FORMAT = "llmdual-tokens/1"


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` if it is an int >= ``minimum``, else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_fraction(name: str, value: object) -> float:
    """``value`` if it is a number strictly between 0 and 1, else a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def _split_id(split: str) -> int:
    """Index of ``split`` in ``SPLITS`` (it keys the seeded streams), or a ``ValueError`` naming the choices."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    return SPLITS.index(split)








def default_cache_dir() -> Path:
    """``$LLMDUAL_CACHE`` if set, else ``~/.cache/llmdual``."""
    return Path(os.environ.get("LLMDUAL_CACHE") or Path.home() / ".cache" / "llmdual")


def _cache_key(tokenizer: Tokenizer, items: Sequence[Path | str]) -> str:
    """Hash of the tokenizer's JSON and the documents: files by path, size and mtime, texts by content."""
    h = hashlib.sha256(CACHE_FORMAT.encode())
    h.update(hashlib.sha256(tokenizer.to_json().encode()).digest())
    for item in items:
        if isinstance(item, Path):
            st = item.stat()
            h.update(f"\0file\0{item.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        else:
            h.update(b"\0text\0" + hashlib.sha256(item.encode()).digest())
    return h.hexdigest()[:32]


def _tokenize(tokenizer: Tokenizer, items: Sequence[Path | str], chunk: int = 256) -> np.ndarray:
    """All documents' ids in one 1-D array, ``eot_id`` between documents (uint16 if the vocabulary fits)."""
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
    eot = np.array([tokenizer.eot_id], dtype=dtype)
    parts: list[np.ndarray] = []
    for start in range(0, len(items), chunk):
        texts = [read_text(i) if isinstance(i, Path) else i for i in items[start : start + chunk]]
        for ids in tokenizer.encode_many(texts):
            parts += [eot, np.asarray(ids, dtype=dtype)]
    return np.concatenate(parts[1:]) if parts else np.zeros(0, dtype=dtype)


def token_stream(
    tokenizer: Tokenizer, sources: str | Path | Iterable[str | Path], cache_dir: str | Path | None = None
) -> np.ndarray:
    """One 1-D token array for all ``sources`` (texts, files, folders as in ``expand_sources``), ``eot_id``
    between documents, memory-mapped from a ``.npy`` cache keyed on the tokenizer and the sources.

    The cache lives in ``cache_dir`` (default ``default_cache_dir()``); editing a file (size or mtime) or
    changing the tokenizer makes a new entry. The array is read-only; its dtype is uint16 when the vocabulary
    fits, else int32.
    """
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer must be an llmdual Tokenizer, got {type(tokenizer).__name__}")
    items = expand_sources(sources)
    if not items:
        raise ValueError("no documents: pass texts, files or folders with text files")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tokens-{_cache_key(tokenizer, items)}.npy"
    if not path.is_file():
        tokens = _tokenize(tokenizer, items)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, tokens)

        atomic_write(path, write)
    return np.load(path, mmap_mode="r")


class _Batches(ABC):
    """Shared iteration: ``batches`` yields ``get_batch`` for consecutive steps."""

    @abstractmethod
    def get_batch(self, split: str, batch_size: int, step: int) -> tuple[np.ndarray, ...]:
        """The batch for ``step`` of ``split``, a pure function of the arguments and the dataset's seed."""

    def batches(
        self, split: str, batch_size: int, steps: int | None = None, start: int = 0
    ) -> Iterator[tuple[np.ndarray, ...]]:
        """``get_batch`` for steps ``start, start + 1, ...``: ``steps`` of them, or endlessly if ``None``."""
        check_int("start", start, 0)
        if steps is not None:
            check_int("steps", steps, 0)
        step = start
        while steps is None or step < start + steps:
            yield self.get_batch(split, batch_size, step)
            step += 1


class LMDataset(_Batches):
    """Next-token batches from a token stream: the last ``val_fraction`` of it is validation, the rest training.

    Each batch takes ``batch_size`` block starts drawn uniformly (with replacement, as in nanoGPT) by a numpy
    Generator seeded with ``(seed, split, step)``; ``y`` is ``x`` shifted by one token.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        val_fraction: float = 0.1,
        seed: int = 0,
        vocab_size: int | None = None,
    ) -> None:
        """``vocab_size`` (for the unigram baseline) defaults to the largest id in ``tokens`` plus one."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"tokens must be a 1-D integer array, got shape {tokens.shape} dtype {tokens.dtype}")
        self.block_size = check_int("block_size", block_size, 1)
        self.seed = check_int("seed", seed, 0)
        _check_fraction("val_fraction", val_fraction)
        n_val = int(round(len(tokens) * val_fraction))
        self.train, self.val = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]
        for name, part in zip(SPLITS, (self.train, self.val)):
            if len(part) < block_size + 1:
                raise ValueError(f"{name} split has {len(part)} tokens; block_size {block_size} needs at least "
                                 f"{block_size + 1} (use more text, a smaller block_size or another val_fraction)")
        observed = int(tokens.max()) + 1
        self.vocab_size = observed if vocab_size is None else check_int("vocab_size", vocab_size, observed)

    def get_batch(self, split: str, batch_size: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` int64 ``[batch_size, block_size]`` for ``step``; the same arguments give the same arrays."""
        split_id = _split_id(split)
        part = (self.train, self.val)[split_id]
        rng = np.random.default_rng([self.seed, split_id, check_int("step", step, 0)])
        starts = rng.integers(0, len(part) - self.block_size, size=check_int("batch_size", batch_size, 1))
        window = np.asarray(part[starts[:, None] + np.arange(self.block_size + 1)], dtype=np.int64)
        return window[:, :-1], window[:, 1:]

    def unigram_entropy(self, split: str = "val") -> float:
        """Cross-entropy (nats/token) on ``split`` of the training unigram distribution, add-one smoothed over
        ``vocab_size`` so unseen tokens cost finite loss: the baseline a language model has to beat."""
        counts = np.bincount(self.train, minlength=self.vocab_size).astype(np.float64)
        log_p = np.log(counts + 1.0) - np.log(counts.sum() + self.vocab_size)
        return float(-log_p[np.asarray((self.train, self.val)[_split_id(split)])].mean())


def _label_ids(raw: list[object], where: list[str]) -> tuple[list[int], list[str]]:
    """Integer labels and names: all-integer labels are ids themselves, otherwise sorted strings are numbered."""
    def as_int(value: object) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdecimal():
            return int(value)
        return None

    ints = [as_int(v) for v in raw]
    if all(i is not None for i in ints):
        negative = [w for w, i in zip(where, ints) if i < 0]
        if negative:
            raise ValueError(f"integer labels must be >= 0; negative at {negative[0]}")
        return ints, [str(i) for i in range(max(ints) + 1)]
    bad = [w for w, v in zip(where, raw) if not isinstance(v, (str, int)) or isinstance(v, bool)]
    if bad:
        raise ValueError(f"labels must be strings or integers; bad label at {bad[0]}")
    names = sorted({str(v) for v in raw})
    index = {name: i for i, name in enumerate(names)}
    return [index[str(v)] for v in raw], names


def load_labeled(path: str | Path) -> tuple[list[str], list[int], list[str]]:
    """``(texts, labels, label_names)`` from JSONL (``{"text": ..., "label": ...}`` per line) or CSV (header
    with ``text`` and ``label`` columns), chosen by the suffix ``.jsonl`` or ``.csv``.

    Labels that are all integers are used as ids (names ``"0"``, ``"1"``, ...); otherwise the distinct label
    strings are sorted and numbered in that order.
    """
    path = Path(path)
    if path.suffix not in (".jsonl", ".csv"):
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl or .csv")
    if not path.is_file():
        raise FileNotFoundError(f"no labeled data file at {path}")
    texts: list[str] = []
    raw: list[object] = []
    where: list[str] = []
    with path.open(encoding="utf-8", newline="") as f:
        if path.suffix == ".jsonl":
            rows = []
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} line {n}: not valid JSON ({err})") from err
                if not isinstance(row, dict):
                    raise ValueError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
                rows.append((f"{path} line {n}", row))
        else:
            reader = csv.DictReader(f)
            missing = {"text", "label"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path}: CSV header must have columns 'text' and 'label', missing {sorted(missing)}"
                                 f" (header: {reader.fieldnames})")
            rows = [(f"{path} line {reader.line_num}", row) for row in reader]
    for at, row in rows:
        if "text" not in row or "label" not in row:
            raise ValueError(f"{at}: needs keys 'text' and 'label', got {sorted(row)}")
        if not isinstance(row["text"], str):
            raise ValueError(f"{at}: 'text' must be a string, got {type(row['text']).__name__}")
        texts.append(row["text"])
        raw.append(row["label"])
        where.append(at)
    if not texts:
        raise ValueError(f"{path}: no examples")
    labels, names = _label_ids(raw, where)
    return texts, labels, names


class ClassificationDataset(_Batches):
    """Tokenized ``(text, label)`` examples, split by a seeded shuffle into train and the last ``val_fraction``.

    Rows are cut to ``max_len`` tokens and right-padded to one width for the whole dataset (the longest
    example, at most ``max_len``), so every batch has the same shape. ``get_batch`` walks an endless stream of
    epochs, each a permutation seeded by ``(seed, split, epoch)``; ``eval_batches`` covers a split once in order.
    """

    def __init__(
        self,
        texts: Sequence[str],
        labels: Sequence[int],
        tokenizer: Tokenizer,
        max_len: int,
        val_fraction: float = 0.2,
        seed: int = 0,
        label_names: Sequence[str] | None = None,
    ) -> None:
        """``label_names`` defaults to ``"0" .. str(max label)``."""
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be an llmdual Tokenizer, got {type(tokenizer).__name__}")
        if len(texts) != len(labels):
            raise ValueError(f"texts and labels differ in length: {len(texts)} vs {len(labels)}")
        check_int("max_len", max_len, 1)
        self.seed = check_int("seed", seed, 0)
        _check_fraction("val_fraction", val_fraction)
        label_arr = np.asarray(labels)
        if label_arr.size and (label_arr.dtype == np.bool_ or not np.issubdtype(label_arr.dtype, np.integer)):
            raise ValueError(f"labels must be integers, got dtype {label_arr.dtype}")
        label_arr = label_arr.astype(np.int64)
        self.label_names = (
            [str(i) for i in range(int(label_arr.max(initial=-1)) + 1)] if label_names is None else list(label_names)
        )
        if label_arr.size and (label_arr.min() < 0 or label_arr.max() >= len(self.label_names)):
            raise ValueError(f"labels must be in [0, {len(self.label_names)}) (one per label name), "
                             f"got range [{label_arr.min()}, {label_arr.max()}]")
        ids, mask = tokenizer.encode_batch(texts, max_len=max_len)
        empty = np.flatnonzero(mask.sum(axis=1) == 0)
        if empty.size:
            raise ValueError(f"text #{empty[0]} is empty (no tokens); every example needs at least one token")
        order = np.random.default_rng(self.seed).permutation(len(texts))
        n_val = int(round(len(texts) * val_fraction))
        parts = (order[: len(texts) - n_val], order[len(texts) - n_val :])
        for name, part in zip(SPLITS, parts):
            if len(part) == 0:
                raise ValueError(f"{name} split is empty with {len(texts)} examples and val_fraction "
                                 f"{val_fraction}; use more examples or another val_fraction")
        self._splits = [(ids[p], mask[p], label_arr[p]) for p in parts]

    @property
    def num_classes(self) -> int:
        """Number of classes (one per label name)."""
        return len(self.label_names)

    def size(self, split: str) -> int:
        """Number of examples in ``split``."""
        return len(self._splits[_split_id(split)][2])

    def get_batch(self, split: str, batch_size: int, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask, labels)`` int64 for ``step``, always ``batch_size`` rows (a batch may
        straddle two epochs); the same arguments give the same arrays."""
        ids, mask, labels = self._splits[_split_id(split)]
        n = len(labels)
        first = check_int("step", step, 0) * check_int("batch_size", batch_size, 1)
        positions = np.arange(first, first + batch_size)
        rows = np.empty(batch_size, dtype=np.int64)
        for epoch in np.unique(positions // n):
            perm = np.random.default_rng([self.seed, _split_id(split), int(epoch)]).permutation(n)
            here = positions // n == epoch
            rows[here] = perm[positions[here] % n]
        return ids[rows], mask[rows], labels[rows]

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every example of ``split`` once, in a fixed order; the last batch may be smaller."""
        ids, mask, labels = self._splits[_split_id(split)]
        check_int("batch_size", batch_size, 1)
        for i in range(0, len(labels), batch_size):
            yield ids[i : i + batch_size], mask[i : i + batch_size], labels[i : i + batch_size]

    def majority_baseline(self, split: str = "val") -> float:
        """Accuracy on ``split`` of always predicting the most frequent training label."""
        train_labels = self._splits[0][2]
        majority = int(np.bincount(train_labels, minlength=self.num_classes).argmax())
        return float(np.mean(self._splits[_split_id(split)][2] == majority))


