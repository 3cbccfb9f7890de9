"""Native export formats (torch.export, AOTInductor, TensorFlow SavedModel, LiteRT): verified in a fresh process,
dynamic in batch and sequence, greedy-identical through their KV decoders, strict about what they refuse.
Every export is of the tiny preset; AOTInductor compiles once (it is the slow one)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import llmdual
from llmdual.contract import backend as backend_package
from llmdual.native import NativeDecoder, load
from llmdual.core.signature import VerificationError, default_shapes, shape_label

# Float32 throughout: torch.export runs the model's own kernels, AOTInductor and the SavedModel's TF graph fuse
# or reorder them, so exports differ from native by float32 rounding (~1e-7 on the tiny preset); 1e-4 is the
# bar the ONNX exports are held to, far below the logit gaps that decide a greedy token.
ATOL = 1e-4
# The SavedModel of the plain model.export path is checked in test_failed_verification_raises_and_leaves_nothing:
# its mismatch is exactly the injected 0.5, so the export itself matched.
CASES = [("torch-export", "lm-kv"), ("torch-export", "classifier"), ("saved-model", "lm-kv"), ("litert", "lm")]
BACKEND = {"torch-export": "torch", "aoti": "torch", "saved-model": "keras", "litert": "keras"}


def model_for(models, format: str, kind: str):
    return models[BACKEND[format], "classifier" if kind == "classifier" else "lm"]


def target(folder, format: str, kind: str):
    return folder / (f"{format}-{kind}" + (".pt2" if BACKEND[format] == "torch" else ""))


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("native")
    return {(f, k): llmdual.export(model_for(models, f, k), target(folder, f, k), format=f, kv_cache=k == "lm-kv")
            for f, k in CASES}


def prompts(config: llmdual.Config) -> list[list[int]]:
    """Two prompts of different lengths: generation left-pads the shorter, so masks and positions matter."""
    rng = np.random.default_rng(1)
    return [rng.integers(0, config.vocab_size, 7).tolist(), rng.integers(0, config.vocab_size, 3).tolist()]


@pytest.mark.parametrize("case", CASES)
def test_export_is_verified_at_shapes_it_was_not_traced_with(config, exported, case):
    result = exported[case]
    kv = case[1] == "lm-kv"
    assert set(result.max_abs_diff) == {shape_label(s) for s in default_shapes(config, kv)}
    assert "2x8" not in result.max_abs_diff and "2x8+3" not in result.max_abs_diff  # the traced shapes
    assert max(result.max_abs_diff.values()) <= ATOL
    assert result.path.exists() and result.file_bytes > 0
    assert not [p for p in result.path.parent.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("case", CASES)
def test_reloaded_export_matches_native_at_new_batch_and_sequence(config, models, exported, case):
    format, kind = case
    artefact = load(exported[case].path, format)
    assert (artefact.task, artefact.kv_cache, artefact.config) == (kind.split("-")[0], kind == "lm-kv", config)
    rng = np.random.default_rng(2)
    for B, T in [(1, 5), (5, 17)]:
        ids = rng.integers(0, config.vocab_size, (B, T))
        mask = (np.arange(T)[None] < np.r_[T, rng.integers(1, T + 1, B - 1)][:, None]).astype(np.int64)
        mask = mask if kind == "classifier" else None
        want = llmdual.forward(model_for(models, format, kind), ids, mask)
        np.testing.assert_allclose(artefact.logits(ids, mask), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("format, kind", [("torch-export", "lm-kv"), ("saved-model", "lm-kv"), ("litert", "lm")])
def test_decoder_greedy_tokens_equal_native(config, models, exported, format, kind):
    model = model_for(models, format, kind)
    rows = prompts(config) if kind == "lm-kv" else prompts(config)[:1]  # a plain export takes unpadded prompts
    want = llmdual.generate(model, rows, 12)
    got = llmdual.generate(NativeDecoder(load(exported[format, kind].path, format)), rows, 12)
    assert [list(g) for g in got] == [list(w) for w in want]
    assert len(set(want[0].tolist())) > 2  # varied tokens: the comparison can tell decoders apart


def test_aoti_kv_decoder_greedy_tokens_equal_native(config, models, tmp_path):
    model = models["torch", "lm"]
    result = llmdual.export(model, tmp_path / "lm-kv.pt2", format="aoti", kv_cache=True)
    assert set(result.max_abs_diff) == {shape_label(s) for s in default_shapes(config, True)}
    assert max(result.max_abs_diff.values()) <= ATOL
    artefact = load(result.path, "aoti")
    ids = np.random.default_rng(3).integers(0, config.vocab_size, (3, 11))
    np.testing.assert_allclose(artefact.logits(ids), llmdual.forward(model, ids), atol=ATOL, rtol=0)
    rows = prompts(config)
    got = llmdual.generate(NativeDecoder(artefact), rows, 12)
    assert [list(g) for g in got] == [list(w) for w in llmdual.generate(model, rows, 12)]


def test_every_format_belongs_to_a_backend():
    formats = importlib.import_module("llmdual.export").FORMATS
    offered = {name: backend_package(name).native_formats() for name in ("torch", "keras")}
    assert list(formats) == ["onnx", *offered["torch"], *offered["keras"]]
    assert all(formats[f] == name for name, own in offered.items() for f in own)
    native = importlib.import_module("llmdual.native.export").FORMATS
    assert {f: b for f, (b, _) in native.items()} == {f: b for f, b in formats.items() if f != "onnx"}


def test_formats_of_the_other_backend_and_unknown_ones_are_refused(models, tmp_path):
    with pytest.raises(ValueError, match="'saved-model' is not available for a torch model; the torch backend "
                                         "exports to onnx, torch-export, aoti"):
        llmdual.export(models["torch", "lm"], tmp_path / "m", format="saved-model")
    with pytest.raises(ValueError, match="'aoti' is not available for a keras model; the keras backend exports to "
                                         "onnx, saved-model, litert"):
        llmdual.export(models["keras", "lm"], tmp_path / "m.pt2", format="aoti")
    with pytest.raises(ValueError, match="unknown export format 'tflite'; choose one of onnx, torch-export, aoti, "
                                         "saved-model, litert"):
        llmdual.export(models["keras", "lm"], tmp_path / "m", format="tflite")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_error_before_exporting(models, tmp_path):
    torch_lm = models["torch", "lm"]
    with pytest.raises(ValueError, match=r"a torch-export export is a \.pt2 file; got 'm.bin'"):
        llmdual.export(torch_lm, tmp_path / "m.bin", format="torch-export")
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        llmdual.export(torch_lm, tmp_path, format="torch-export")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        llmdual.export(torch_lm, tmp_path / "missing" / "m.pt2", format="aoti")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="a file is there"):
        llmdual.export(models["keras", "lm"], tmp_path / "file", format="saved-model")
    with pytest.raises(ValueError, match="kv_cache=True needs an LM"):
        llmdual.export(models["keras", "classifier"], tmp_path / "m", format="saved-model", kv_cache=True)
    for task, kv in [("classifier", False), ("lm", True)]:
        with pytest.raises(ValueError, match=r"litert exports the plain LM only: .*FlexStridedSlice.*; export this "
                                             "one as onnx or saved-model"):
            llmdual.export(models["keras", task], tmp_path / "m", format="litert", kv_cache=kv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_missing_onnx_extra_is_named(models, tmp_path, monkeypatch):
    module = importlib.import_module("llmdual.export")
    monkeypatch.setitem(module.ONNX_PACKAGES, "torch", ("onnx", "llmdual_absent_package"))
    with pytest.raises(ImportError, match=r"needs llmdual_absent_package.*pip install 'llmdual\[onnx\]'"):
        llmdual.export(models["torch", "lm"], tmp_path / "m.onnx")


@pytest.mark.parametrize("format, task", [("torch-export", "lm"), ("saved-model", "classifier")])
def test_failed_verification_raises_and_leaves_nothing(models, tmp_path, monkeypatch, format, task):
    package = backend_package(BACKEND[format])
    real_run = package.run_signature
    monkeypatch.setattr(package, "run_signature", lambda *a: [x + 0.5 for x in real_run(*a)])
    path = target(tmp_path, format, task)
    if format == "saved-model":  # a folder already there stays as it was
        path.mkdir()
        (path / "kept").write_text("x")
    with pytest.raises(VerificationError, match=rf"does not match the native {BACKEND[format]} model .*"
                                                r"max abs diff 5\.000e-01"):
        llmdual.export(models[BACKEND[format], task], path, format=format)
    assert [p.name for p in tmp_path.iterdir()] == ([path.name] if format == "saved-model" else [])
    if format == "saved-model":
        assert [p.name for p in path.iterdir()] == ["kept"]
