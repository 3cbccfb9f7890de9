"""Byte-level BPE tokenizer (GPT-2 style) on the HF ``tokenizers`` library: lossless for any Unicode text."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from llmdual.core.io import atomic_write

EOT = "<|endoftext|>"
PAD = "<|pad|>"
FILENAME = "tokenizer.json"
TEXT_EXTENSIONS = (".py", ".txt", ".md", ".rst")
MIN_VOCAB = 256 + 2  # every byte plus the two special tokens
# Text every usable tokenizer must give back unchanged: ASCII code, whitespace runs, accents, CJK and an emoji.
ROUND_TRIP_PROBE = "def f(x):\n\treturn x  # Héllo, wörld! 日本語 🎉\r\n"


def read_text(path: Path) -> str:
    """A file's text as UTF-8, undecodable bytes replaced, so one odd file cannot stop a corpus."""
    return Path(path).read_text(encoding="utf-8", errors="replace")


def expand_sources(
    sources: str | Path | Iterable[str | Path], extensions: Sequence[str] = TEXT_EXTENSIONS
) -> list[Path | str]:
    """Documents named by ``sources``: files as ``Path``, folders expanded, other strings kept as literal text.

    A ``Path``, or a ``str`` without newlines naming an existing file or folder, is read from disk; any other
    ``str`` is a document itself. Folders are walked recursively in sorted order, keeping files whose suffix is
    in ``extensions`` and skipping hidden entries (names starting with ``.``). A single str/Path is one source.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    items: list[Path | str] = []
    for i, src in enumerate(sources):
        if isinstance(src, str) and ("\n" in src or not os.path.exists(src)):
            items.append(src)
            continue
        if not isinstance(src, (str, Path)):
            raise TypeError(f"source #{i} must be a str (text or path) or a Path, got {type(src).__name__}")
        path = Path(src)
        if path.is_dir():
            found = (
                p for p in path.rglob("*")
                if p.suffix in extensions and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            items.extend(sorted(found, key=lambda p: p.relative_to(path).as_posix()))
        elif path.is_file():
            items.append(path)
        else:
            raise FileNotFoundError(f"source #{i}: no file or folder at {path}")
    return items


class Tokenizer:
    """A byte-level BPE tokenizer with an end-of-text token (``<|endoftext|>``) and a pad token."""

    def __init__(self, hf: tokenizers.Tokenizer) -> None:
        """Wrap a HF ``tokenizers.Tokenizer``; it must know ``<|endoftext|>`` (``<|pad|>`` falls back to it)."""
        if not isinstance(hf, tokenizers.Tokenizer):
            raise TypeError(f"expected a tokenizers.Tokenizer, got {type(hf).__name__}")
        eot = hf.token_to_id(EOT)
        if eot is None:
            raise ValueError(f"tokenizer has no {EOT!r} token; an end-of-text token is required")
        pad = hf.token_to_id(PAD)
        _check_lossless(hf)
        self._hf = hf
        self._eot = eot
        self._pad = eot if pad is None else pad
        self._id_end = max(hf.get_vocab(with_added_tokens=True).values(), default=-1) + 1

    @classmethod
    def train(
        cls, texts_or_files: str | Path | Iterable[str | Path], vocab_size: int, min_frequency: int = 2
    ) -> Tokenizer:
        """Train a byte-level BPE of at most ``vocab_size`` tokens (all 256 bytes, ``<|endoftext|>``, ``<|pad|>``
        and merges) on texts, files or folders, resolved as in ``expand_sources``."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
            raise ValueError(f"vocab_size must be an integer >= {MIN_VOCAB} (256 bytes + 2 special tokens), "
                             f"got {vocab_size!r}")
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency must be a positive integer, got {min_frequency!r}")
        items = expand_sources(texts_or_files)
        if not items:
            raise ValueError("no training documents: pass texts, files or folders with text files")
        hf = tokenizers.Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[EOT, PAD],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        texts = (read_text(item) if isinstance(item, Path) else item for item in items)
        hf.train_from_iterator(texts, trainer, length=len(items))
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a standard ``tokenizer.json`` (ours or e.g. GPT-2's), given the file or a folder holding it."""
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}")
        try:
            hf = tokenizers.Tokenizer.from_file(str(path))
        except Exception as err:  # the Rust side raises plain Exception for malformed JSON
            raise ValueError(f"{path} is not a valid tokenizer.json (corrupt or foreign format?): {err}") from err
        try:
            return cls(hf)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def save(self, path: str | Path) -> Path:
        """Write a standard ``tokenizer.json`` atomically to ``path`` (into it, if it is a folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        return atomic_write(path, lambda tmp: self._hf.save(str(tmp), pretty=True))

    def to_json(self) -> str:
        """The tokenizer's full ``tokenizer.json`` text, e.g. to key caches on it."""
        return self._hf.to_str()

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        return self._hf.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int:
        """Id of ``<|endoftext|>``, which separates documents."""
        return self._eot

    @property
    def pad_id(self) -> int:
        """Id used to pad batches: ``<|pad|>``, or ``eot_id`` when the tokenizer has none (as with GPT-2)."""
        return self._pad

    def check_fits(self, vocab_size: int, model: str = "the model") -> None:
        """``ValueError`` naming both sizes unless this tokenizer's ids are exactly ``model``'s ``vocab_size`` ids:
        a larger tokenizer encodes ids the model has no embedding for, a smaller one cannot decode every id the
        model may sample."""
        if self.vocab_size != vocab_size or self._id_end != vocab_size:
            reach = f" (its ids reach {self._id_end - 1})" if self._id_end != self.vocab_size else ""
            raise ValueError(f"the tokenizer has {self.vocab_size} ids{reach} but {model} has vocab_size {vocab_size}: "
                             f"they do not belong together; use the tokenizer the model was trained with")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special-token strings in it, such as ``<|endoftext|>``, map to their ids)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of several texts, encoded in parallel."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of str (wrap a single text in a list)")
        return [enc.ids for enc in self._hf.encode_batch(list(texts), add_special_tokens=False)]

    def encode_batch(
        self, texts: Sequence[str], max_len: int | None = None, pad_to_max: bool = False, add_eot: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, attention_mask)``, int64 ``[batch, seq]``, right-padded with ``pad_id``; mask 1 on real tokens.

        Rows are cut to ``max_len`` tokens; ``seq`` is the longest row, or ``max_len`` if ``pad_to_max`` (fixed
        shapes). ``add_eot`` ends every row with ``eot_id``, kept even when the text is cut.
        """
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
            raise ValueError(f"max_len must be a positive integer or None, got {max_len!r}")
        if pad_to_max and max_len is None:
            raise ValueError("pad_to_max=True needs max_len")
        rows = self.encode_many(texts)
        if max_len is not None:
            rows = [row[: max_len - 1 if add_eot else max_len] for row in rows]
        if add_eot:
            rows = [row + [self._eot] for row in rows]
        width = max_len if pad_to_max else max((len(row) for row in rows), default=0)
        ids = np.full((len(rows), width), self._pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special: bool = False) -> str:
        """Text of a 1-D sequence of ids; ``skip_special`` drops special tokens instead of spelling them out."""
        arr = np.asarray(ids)
        if arr.size == 0:
            return ""
        if arr.ndim != 1:
            raise ValueError(f"ids must be a 1-D sequence, got shape {arr.shape}")
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"ids must be integers, got dtype {arr.dtype}")
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} out of range: ids must be in [0, {self.vocab_size}) (vocab_size)")
        return self._hf.decode(arr.tolist(), skip_special_tokens=skip_special)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id}, pad_id={self.pad_id})"


def _check_lossless(hf: tokenizers.Tokenizer) -> None:
    """``ValueError`` unless ``ROUND_TRIP_PROBE`` encodes and decodes back to itself."""
    got = hf.decode(hf.encode(ROUND_TRIP_PROBE, add_special_tokens=False).ids, skip_special_tokens=False)
    if got != ROUND_TRIP_PROBE:
        raise ValueError(f"tokenizer is not lossless: {ROUND_TRIP_PROBE!r} decodes back as {got!r}; a byte-level "
                         f"BPE with a ByteLevel decoder is required (is the 'decoder' missing or null?)")
