"""Model files (``llmdual.save``/``load``): bit-identical round trips across backends and clear errors."""

import json
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import llmdual
from llmdual.contract import backends


@pytest.mark.parametrize("src, dst", product(backends(), repeat=2))  # every writer and reader, itself included
def test_save_load_is_bit_identical(tiny, task, src, dst, tmp_path):
    model = llmdual.build(tiny, src, task, seed=3)
    path = llmdual.save(model, tmp_path / "m.safetensors")
    restored = llmdual.load(path, backend=dst)
    a, b = llmdual.get_weights(model), llmdual.get_weights(restored)
    assert restored.config == tiny and restored.task == task
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left behind


def test_truncated_model_file_is_reported(tiny, tmp_path):
    path = llmdual.save(llmdual.build(tiny, "torch"), tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable safetensors model file \\(truncated or corrupt"):
        llmdual.load(path)


def test_mismatched_model_file_lists_the_problems(tiny, tmp_path):
    weights = llmdual.init_weights(tiny)
    weights["wte.weight"] = weights["wte.weight"][:10]
    metadata = {"format": "llmdual/1", "task": "lm", "config": tiny.to_json()}
    save_file(weights, tmp_path / "bad.safetensors", metadata=metadata)
    with pytest.warns(UserWarning, match="no checksum"), \
            pytest.raises(ValueError, match=r"wte.weight: got \(10, 64\), expected \(256, 64\)"):
        llmdual.load(tmp_path / "bad.safetensors")


def test_foreign_safetensors_and_missing_files(tiny, tmp_path):
    save_file({"x": np.zeros(2, np.float32)}, tmp_path / "other.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not an llmdual model file: format 'pt'"):
        llmdual.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="no model file at"):
        llmdual.load(tmp_path / "absent.safetensors")
    bad_meta = {"format": "llmdual/1", "task": "lm", "config": json.dumps({"d_model": 3})}
    save_file(llmdual.init_weights(tiny), tmp_path / "meta.safetensors", metadata=bad_meta)
    with pytest.warns(UserWarning, match="no checksum"), pytest.raises((ValueError, TypeError)):
        llmdual.load(tmp_path / "meta.safetensors")


def test_failed_write_leaves_nothing(tiny, tmp_path, monkeypatch):
    from llmdual.core import io

    def explode(weights, path, metadata):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", explode)
    with pytest.raises(OSError, match="cannot write .*m.safetensors: disk full"):
        llmdual.save(llmdual.build(tiny, "torch"), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="folder .* does not exist"):
        llmdual.save(llmdual.build(tiny, "torch"), tmp_path / "no" / "m.safetensors")


def test_written_files_get_the_usual_permissions(tiny, tmp_path):
    """The temporary name is private (mkstemp); the renamed file gets the mode ``open`` would give it."""
    import os

    mask = os.umask(0o022)
    try:
        path = llmdual.save(llmdual.build(tiny, "torch"), tmp_path / "m.safetensors")
    finally:
        os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o644
