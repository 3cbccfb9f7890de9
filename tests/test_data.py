"""Tests for the data pipeline: cached token streams, seeded LM and classification batches, labeled files."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from llmdual.core.corpus import default_corpus_files, stdlib_classification, stdlib_dir
from llmdual.core.data import ClassificationDataset, LMDataset, load_labeled, token_stream
from llmdual.core.tokenizer import Tokenizer

DOCS = [f"document {i}: " + "the cat sat on the mat. " * (i % 5 + 1) for i in range(40)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(DOCS + ["def f(x):\n    return x\n"], vocab_size=300)


@pytest.fixture(scope="module")
def stream() -> np.ndarray:
    return np.arange(5000, dtype=np.int64) % 97


def test_default_corpus_is_sorted_stdlib_without_tests() -> None:
    files = default_corpus_files(limit=50)
    root = stdlib_dir()
    rel = [f.relative_to(root).as_posix() for f in files]
    assert len(files) == 50 and all(f.suffix == ".py" and f.is_file() for f in files)
    assert rel == sorted(rel)
    assert not any(part in ("test", "tests", "site-packages") for r in rel for part in r.split("/"))
    assert default_corpus_files(limit=50) == files
    with pytest.raises(ValueError, match="limit"):
        default_corpus_files(limit=0)


def test_token_stream_separates_documents_with_eot(tok: Tokenizer, tmp_path: Path) -> None:
    docs = DOCS[:3]
    tokens = token_stream(tok, docs, cache_dir=tmp_path)
    expected = tok.encode(docs[0]) + [tok.eot_id] + tok.encode(docs[1]) + [tok.eot_id] + tok.encode(docs[2])
    assert tokens.ndim == 1 and np.issubdtype(tokens.dtype, np.integer)
    assert tokens.tolist() == expected


def test_token_stream_cache_hit_and_invalidation(tok: Tokenizer, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(DOCS[0], encoding="utf-8")
    (corpus / "b.md").write_text(DOCS[1], encoding="utf-8")
    cache = tmp_path / "cache"
    first = token_stream(tok, corpus, cache_dir=cache)
    assert isinstance(first, np.memmap) and first.filename is not None
    assert first.tolist() == tok.encode(DOCS[0]) + [tok.eot_id] + tok.encode(DOCS[1])
    cached_files = sorted(cache.iterdir())
    assert len(cached_files) == 1 and cached_files[0].suffix == ".npy"

    again = token_stream(tok, corpus, cache_dir=cache)
    assert Path(again.filename) == Path(first.filename)
    np.testing.assert_array_equal(again, first)
    assert sorted(cache.iterdir()) == cached_files  # a hit writes nothing

    (corpus / "b.md").write_text(DOCS[2], encoding="utf-8")
    stat = (corpus / "b.md").stat()
    os.utime(corpus / "b.md", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = token_stream(tok, corpus, cache_dir=cache)
    assert changed.tolist() == tok.encode(DOCS[0]) + [tok.eot_id] + tok.encode(DOCS[2])
    assert len(list(cache.iterdir())) == 2


def test_token_stream_cache_keyed_on_tokenizer_and_env(tok: Tokenizer, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    other = Tokenizer.train(DOCS, vocab_size=280)
    monkeypatch.setenv("LLMDUAL_CACHE", str(tmp_path))
    a = token_stream(tok, DOCS[:2])
    b = token_stream(other, DOCS[:2])
    assert Path(a.filename).parent == tmp_path == Path(b.filename).parent
    assert Path(a.filename) != Path(b.filename)
    assert b.tolist() == other.encode(DOCS[0]) + [other.eot_id] + other.encode(DOCS[1])


def test_lm_batches_are_shifted_and_deterministic() -> None:
    tokens = np.arange(3000, dtype=np.int64)  # every position distinct, so values identify positions
    ds = LMDataset(tokens, block_size=16, val_fraction=0.2, seed=3)
    x, y = ds.get_batch("train", 8, step=5)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)  # next-token targets
    np.testing.assert_array_equal(x - x[:, :1], np.broadcast_to(np.arange(16), x.shape))  # contiguous windows
    assert y.max() < len(ds.train)
    again = LMDataset(tokens, block_size=16, val_fraction=0.2, seed=3)
    for step in (0, 5, 99):
        for a, b in zip(ds.get_batch("train", 8, step), again.get_batch("train", 8, step)):
            np.testing.assert_array_equal(a, b)


def test_lm_batches_differ_by_seed_step_and_split(stream: np.ndarray) -> None:
    a = LMDataset(stream, block_size=16, seed=0)
    b = LMDataset(stream, block_size=16, seed=1)
    assert not np.array_equal(a.get_batch("train", 8, 0)[0], b.get_batch("train", 8, 0)[0])
    assert not np.array_equal(a.get_batch("train", 8, 0)[0], a.get_batch("train", 8, 1)[0])
    assert not np.array_equal(a.get_batch("train", 8, 0)[0], a.get_batch("val", 8, 0)[0])


def test_lm_batches_resume_mid_run(stream: np.ndarray) -> None:
    ds = LMDataset(stream, block_size=8, seed=7)
    full = list(ds.batches("train", 4, steps=10))
    resumed = list(ds.batches("train", 4, steps=4, start=6))
    assert len(full) == 10 and len(resumed) == 4
    for (xa, ya), (xb, yb) in zip(full[6:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_lm_train_and_val_do_not_overlap() -> None:
    tokens = np.arange(1000, dtype=np.int64)  # every position distinct, so values identify positions
    ds = LMDataset(tokens, block_size=10, val_fraction=0.25, seed=0)
    assert len(ds.train) + len(ds.val) == len(tokens)
    assert ds.train.max() < ds.val.min()
    train_seen = set()
    for x, y in ds.batches("train", 16, steps=50):
        train_seen |= set(x.ravel().tolist()) | set(y.ravel().tolist())
    val_seen = set()
    for x, y in ds.batches("val", 16, steps=50):
        val_seen |= set(x.ravel().tolist()) | set(y.ravel().tolist())
    assert train_seen and val_seen and not train_seen & val_seen


def test_unigram_entropy_matches_direct_computation() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.choice(6, size=3000, p=[0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    ds = LMDataset(tokens, block_size=4, val_fraction=0.1, vocab_size=8)
    train, val = tokens[:2700], tokens[2700:]
    probs = np.array([(np.sum(train == v) + 1) / (len(train) + 8) for v in range(8)])
    expected = -np.mean(np.log(probs[val]))
    assert ds.unigram_entropy("val") == pytest.approx(expected, rel=1e-12)
    # a skewed distribution is cheaper than the uniform one over the vocabulary
    assert ds.unigram_entropy("train") < np.log(8)


def test_lm_dataset_rejects_bad_arguments(stream: np.ndarray) -> None:
    with pytest.raises(ValueError, match="block_size"):
        LMDataset(stream, block_size=0)
    with pytest.raises(ValueError, match="val_fraction"):
        LMDataset(stream, block_size=4, val_fraction=1.0)
    with pytest.raises(ValueError, match="val split has"):
        LMDataset(stream[:100], block_size=50, val_fraction=0.1)
    with pytest.raises(ValueError, match="1-D integer"):
        LMDataset(stream.astype(np.float32), block_size=4)
    ds = LMDataset(stream, block_size=4)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        ds.get_batch("test", 2, 0)
    with pytest.raises(ValueError, match="batch_size"):
        ds.get_batch("train", 0, 0)
    with pytest.raises(ValueError, match="vocab_size"):
        LMDataset(stream, block_size=4, vocab_size=10)


def test_load_labeled_jsonl_and_csv_agree(tmp_path: Path) -> None:
    rows = [("good, \"quoted\" film", "pos"), ("bad\nfilm", "neg"), ("fine", "pos"), ("ok ✓", "neutral")]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in rows) + "\n\n", encoding="utf-8")
    csv_path = tmp_path / "data.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        writer.writerows([(lab, t) for t, lab in rows])
    for path in (jsonl, csv_path):
        texts, labels, names = load_labeled(path)
        assert texts == [t for t, _ in rows]
        assert names == sorted({lab for _, lab in rows})
        assert [names[i] for i in labels] == [lab for _, lab in rows]


def test_load_labeled_integer_labels_are_ids(tmp_path: Path) -> None:
    path = tmp_path / "ints.jsonl"
    path.write_text("\n".join(json.dumps({"text": str(i), "label": i % 3}) for i in range(6)), encoding="utf-8")
    _, labels, names = load_labeled(path)
    assert labels == [i % 3 for i in range(6)]
    assert names == ["0", "1", "2"]


def test_load_labeled_errors(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(ValueError, match="line 2"):
        load_labeled(bad_json)
    missing_key = tmp_path / "missing.jsonl"
    missing_key.write_text('{"text": "a"}\n')
    with pytest.raises(ValueError, match="'label'"):
        load_labeled(missing_key)
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("sentence,label\nhi,1\n")
    with pytest.raises(ValueError, match="missing \\['text'\\]"):
        load_labeled(bad_header)
    with pytest.raises(ValueError, match=".jsonl or .csv"):
        load_labeled(tmp_path / "data.txt")
    with pytest.raises(FileNotFoundError):
        load_labeled(tmp_path / "absent.csv")


@pytest.fixture(scope="module")
def cls_data(tok: Tokenizer) -> ClassificationDataset:
    texts = [DOCS[i % len(DOCS)] + " extra" * (i % 7) for i in range(50)]
    labels = [i % 3 for i in range(40)] + [0] * 10
    return ClassificationDataset(texts, labels, tok, max_len=12, val_fraction=0.2, seed=1,
                                 label_names=["a", "b", "c"])


def test_classification_batches_shapes_and_masks(cls_data: ClassificationDataset, tok: Tokenizer) -> None:
    ids, mask, labels = cls_data.get_batch("train", 6, step=0)
    assert ids.shape == mask.shape == (6, 12)
    assert labels.shape == (6,)
    assert ids.dtype == mask.dtype == labels.dtype == np.int64
    assert set(np.unique(mask)) <= {0, 1}
    for row, m in zip(ids, mask):
        n = int(m.sum())
        assert n >= 1 and (m[:n] == 1).all() and (row[n:] == tok.pad_id).all()
    assert cls_data.num_classes == 3 and cls_data.label_names == ["a", "b", "c"]
    assert cls_data.size("train") + cls_data.size("val") == 50 and cls_data.size("val") == 10


def test_classification_order_is_seeded_and_epochs_cover_the_split(cls_data: ClassificationDataset) -> None:
    n = cls_data.size("train")
    epoch = np.concatenate([cls_data.get_batch("train", 5, s)[0] for s in range(n // 5)])
    first_pass = {tuple(r) for r in epoch}
    all_rows = {tuple(r) for ids, _, _ in cls_data.eval_batches("train", 7) for r in ids}
    assert first_pass == all_rows  # one epoch visits every training example
    for a, b in zip(cls_data.get_batch("train", 9, 4), cls_data.get_batch("train", 9, 4)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(cls_data.get_batch("train", 9, 0)[0], cls_data.get_batch("train", 9, 1)[0])
    resumed = list(cls_data.batches("train", 4, steps=2, start=3))
    np.testing.assert_array_equal(resumed[1][0], cls_data.get_batch("train", 4, 4)[0])


def test_classification_seed_changes_split_and_order(tok: Tokenizer) -> None:
    texts = [f"{i} example" for i in range(30)]
    labels = [i % 2 for i in range(30)]
    a = ClassificationDataset(texts, labels, tok, max_len=8, seed=0)
    b = ClassificationDataset(texts, labels, tok, max_len=8, seed=1)
    val_a = {tuple(r) for ids, _, _ in a.eval_batches("val", 100) for r in ids}
    val_b = {tuple(r) for ids, _, _ in b.eval_batches("val", 100) for r in ids}
    train_a = {tuple(r) for ids, _, _ in a.eval_batches("train", 100) for r in ids}
    assert val_a != val_b
    assert not val_a & train_a


def test_eval_batches_cover_split_once(cls_data: ClassificationDataset) -> None:
    batches = list(cls_data.eval_batches("val", 4))
    assert [len(b[2]) for b in batches] == [4, 4, 2]


def test_majority_baseline(tok: Tokenizer) -> None:
    texts = [f"text {i}" for i in range(20)]
    labels = [0] * 14 + [1] * 6
    ds = ClassificationDataset(texts, labels, tok, max_len=8, val_fraction=0.25, seed=0)
    train_labels = np.concatenate([lab for _, _, lab in ds.eval_batches("train", 100)])
    val_labels = np.concatenate([lab for _, _, lab in ds.eval_batches("val", 100)])
    majority = np.bincount(train_labels).argmax()
    assert ds.majority_baseline("val") == pytest.approx(np.mean(val_labels == majority))
    assert ds.majority_baseline("train") == pytest.approx(np.mean(train_labels == majority))
    assert ds.majority_baseline("train") >= 0.5


def test_classification_rejects_bad_input(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="differ in length"):
        ClassificationDataset(["a", "b"], [0], tok, max_len=4)
    with pytest.raises(ValueError, match="text #1 is empty"):
        ClassificationDataset(["a", "", "c", "d", "e"], [0, 1, 0, 1, 0], tok, max_len=4)
    with pytest.raises(ValueError, match="labels must be in \\[0, 2\\)"):
        ClassificationDataset(["a", "b", "c"], [0, 1, 2], tok, max_len=4, label_names=["x", "y"])
    with pytest.raises(ValueError, match="val split is empty"):
        ClassificationDataset(["a", "b"], [0, 1], tok, max_len=4, val_fraction=0.1)


def test_stdlib_classification_is_deterministic_and_balanced() -> None:
    texts, labels, names = stdlib_classification(n_per_class=30, snippet_lines=6, seed=0)
    assert len(names) >= 2 and set(labels) == set(range(len(names)))
    assert np.bincount(labels).tolist() == [30] * len(names)
    assert all(isinstance(t, str) and len(t.splitlines()) <= 6 for t in texts)
    assert len(set(texts)) == len(texts)
    assert not any(names[lab] in text for text, lab in zip(texts, labels))
    again = stdlib_classification(n_per_class=30, snippet_lines=6, seed=0)
    assert again == (texts, labels, names)
    other = stdlib_classification(n_per_class=30, snippet_lines=6, seed=1)
    assert other[0] != texts


def test_stdlib_classification_errors() -> None:
    with pytest.raises(ValueError, match="no stdlib package 'no_such_pkg'"):
        stdlib_classification(n_per_class=5, packages=("json", "no_such_pkg"))
    with pytest.raises(ValueError, match="usable"):
        stdlib_classification(n_per_class=10**7, packages=("json", "email"))
