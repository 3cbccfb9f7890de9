"""Tests for the byte-level BPE tokenizer: losslessness, batching, persistence, GPT-2 files and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmdual.core.tokenizer import Tokenizer, expand_sources

CORPUS = [
    "def add(x, y):\n    return x + y\n",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "héllo wörld, naïve café — 日本語のテキスト 🎉🎉",
    "for i in range(10):\n\tprint(i)\r\n",
] * 10


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=300)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (from the GPT-2 paper's released encoder)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_gpt2_style_json(path: Path) -> dict[str, int]:
    """A tiny tokenizer.json laid out like GPT-2's (ByteLevel, ``<|endoftext|>`` last, no pad); returns its vocab."""
    chars = bytes_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    space = chars[ord(" ")]
    merges = [f"{space} t", "h e", f"{space}t he"]
    for merge in merges:
        vocab["".join(merge.split(" "))] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": vocab["<|endoftext|>"], "content": "<|endoftext|>", "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": True, "special": True}
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "vocab": vocab, "merges": merges},
    }
    path.write_text(json.dumps(doc), encoding="utf-8")
    return vocab


def test_trained_vocab_has_specials_and_all_bytes(tok: Tokenizer) -> None:
    assert tok.vocab_size == 300
    assert tok.eot_id != tok.pad_id
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"
    assert tok.decode([tok.pad_id]) == "<|pad|>"
    # bytes never seen in the corpus still encode losslessly
    unseen = "\x00\x7fЖ\U0001f600"
    assert tok.decode(tok.encode(unseen)) == unseen


def test_merges_compress_the_corpus(tok: Tokenizer) -> None:
    text = CORPUS[1]
    assert len(tok.encode(text)) < len(text.encode("utf-8"))


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_decode_inverts_encode(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


@given(st.lists(st.text(max_size=30), min_size=1, max_size=6), st.booleans())
@settings(deadline=None)
def test_encode_batch_pads_right_and_masks(tok: Tokenizer, texts: list[str], add_eot: bool) -> None:
    ids, mask = tok.encode_batch(texts, add_eot=add_eot)
    rows = [tok.encode(t) + ([tok.eot_id] if add_eot else []) for t in texts]
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape == (len(texts), max(len(r) for r in rows))
    for i, row in enumerate(rows):
        assert ids[i, : len(row)].tolist() == row
        assert (ids[i, len(row):] == tok.pad_id).all()
        assert mask[i].tolist() == [1] * len(row) + [0] * (ids.shape[1] - len(row))


def test_encode_batch_truncates_and_keeps_eot(tok: Tokenizer) -> None:
    long_text = CORPUS[1]
    full = tok.encode(long_text)
    ids, mask = tok.encode_batch([long_text, "a"], max_len=5)
    assert ids.shape == (2, 5)
    assert ids[0].tolist() == full[:5]
    ids, mask = tok.encode_batch([long_text, "a"], max_len=5, add_eot=True)
    assert ids[0].tolist() == full[:4] + [tok.eot_id]
    assert mask[1].sum() == len(tok.encode("a")) + 1
    ids, mask = tok.encode_batch(["a", "b"], max_len=7, pad_to_max=True)
    assert ids.shape == mask.shape == (2, 7)


def test_encode_batch_rejects_bad_arguments(tok: Tokenizer) -> None:
    with pytest.raises(TypeError, match="sequence of str"):
        tok.encode_batch("not a list")
    with pytest.raises(ValueError, match="max_len"):
        tok.encode_batch(["a"], max_len=0)
    with pytest.raises(ValueError, match="pad_to_max"):
        tok.encode_batch(["a"], pad_to_max=True)


def test_decode_accepts_numpy_and_skips_specials(tok: Tokenizer) -> None:
    ids = tok.encode("hello") + [tok.eot_id] + tok.encode(" world") + [tok.pad_id]
    assert tok.decode(np.array(ids, dtype=np.int32)) == tok.decode(ids)
    assert tok.decode(ids, skip_special=True) == "hello world"
    assert tok.decode([]) == ""


@pytest.mark.parametrize("bad", [-1, 300, 10**6])
def test_decode_out_of_range_names_id_and_vocab(tok: Tokenizer, bad: int) -> None:
    with pytest.raises(ValueError) as err:
        tok.decode([1, bad, 2])
    assert str(bad) in str(err.value) and str(tok.vocab_size) in str(err.value)


def test_decode_rejects_non_integer_ids(tok: Tokenizer) -> None:
    with pytest.raises(TypeError, match="integers"):
        tok.decode(np.array([1.5, 2.0]))
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.zeros((2, 2), dtype=np.int64))


def test_save_load_round_trip(tok: Tokenizer, tmp_path: Path) -> None:
    path = tok.save(tmp_path / "tok.json")
    loaded = Tokenizer.load(path)
    assert loaded.to_json() == tok.to_json()
    assert (loaded.vocab_size, loaded.eot_id, loaded.pad_id) == (tok.vocab_size, tok.eot_id, tok.pad_id)
    for text in CORPUS[:4] + ["unseen ✓ text"]:
        assert loaded.encode(text) == tok.encode(text)
    # a folder works both ways, and saving leaves no temporary files behind
    tok.save(tmp_path)
    assert Tokenizer.load(tmp_path).to_json() == tok.to_json()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.json", "tokenizer.json"]


def test_gpt2_style_json_loads(tmp_path: Path) -> None:
    vocab = write_gpt2_style_json(tmp_path / "tokenizer.json")
    gpt2 = Tokenizer.load(tmp_path)
    space = bytes_to_unicode()[ord(" ")]
    assert gpt2.vocab_size == len(vocab)
    assert gpt2.eot_id == vocab["<|endoftext|>"]
    assert gpt2.pad_id == gpt2.eot_id  # no pad token: fall back to end-of-text
    assert gpt2.encode(" the") == [vocab[f"{space}the"]]
    assert gpt2.encode("the") == [vocab["t"], vocab["he"]]
    text = "the end<|endoftext|> ünïcode ✓"
    assert gpt2.decode(gpt2.encode(text)) == text
    ids, mask = gpt2.encode_batch(["the", " the"])
    assert ids[1, 1] == gpt2.eot_id and mask[1].tolist() == [1, 0]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        Tokenizer.load(tmp_path / "missing.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"version": "1.0", "model": ')
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        Tokenizer.load(corrupt)
    vocab_path = tmp_path / "tokenizer.json"
    write_gpt2_style_json(vocab_path)
    doc = json.loads(vocab_path.read_text())
    doc["added_tokens"] = []
    del doc["model"]["vocab"]["<|endoftext|>"]
    vocab_path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="<\\|endoftext\\|>"):
        Tokenizer.load(vocab_path)


def test_train_from_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text(CORPUS[1], encoding="utf-8")
    (tmp_path / "sub" / "b.py").write_text(CORPUS[0], encoding="utf-8")
    (tmp_path / "sub" / "skip.bin").write_bytes(b"\xff\xfe")
    assert expand_sources(tmp_path) == [tmp_path / "a.txt", tmp_path / "sub" / "b.py"]
    from_files = Tokenizer.train([tmp_path / "a.txt", str(tmp_path / "sub" / "b.py")], vocab_size=280)
    from_folder = Tokenizer.train(tmp_path, vocab_size=280)
    from_texts = Tokenizer.train([CORPUS[1], CORPUS[0]], vocab_size=280)
    assert from_files.to_json() == from_folder.to_json() == from_texts.to_json()


def test_train_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 258"):
        Tokenizer.train(CORPUS, vocab_size=100)
    with pytest.raises(ValueError, match="no training documents"):
        Tokenizer.train([], vocab_size=300)
    with pytest.raises(FileNotFoundError, match="no file or folder"):
        Tokenizer.train([tmp_path / "nope.txt"], vocab_size=300)
    with pytest.raises(TypeError, match="source #1"):
        Tokenizer.train(["text", 42], vocab_size=300)
