"""Native export formats, every one the registry names (torch.export, AOTInductor, TensorFlow SavedModel, LiteRT):
saved by its backend, verified in a fresh process, reloaded dynamic in batch and sequence, greedy-identical
through their KV decoders, strict about what they refuse. Every export is of the tiny preset; AOTInductor
compiles once (it is the slow one)."""

from __future__ import annotations

import dataclasses
import re
from itertools import permutations

import numpy as np
import pytest

import llmdual
from llmdual import contract
from llmdual.contract import backend as backend_package
from llmdual.contract import backends, export_formats, info, native_formats
from llmdual.core.signature import VerificationError, default_shapes, shape_label
from llmdual.export import formats_for
from llmdual.native import NativeDecoder, load

# Float32 throughout: torch.export runs the model's own kernels, AOTInductor and the SavedModel's TF graph fuse
# or reorder them, so exports differ from native by float32 rounding (~1e-7 on the tiny preset); 1e-4 is the
# bar the ONNX exports are held to, far below the logit gaps that decide a greedy token.
ATOL = 1e-4
# The SavedModel of the plain model.export path is checked in test_failed_verification_raises_and_leaves_nothing:
# its mismatch is exactly the injected 0.5, so the export itself matched.
NATIVE = native_formats()  # format -> (the backend that writes it, the format)
# Every registered format's decoder: the KV-cache step, or the plain LM where the format exports only that
DECODERS = [(f, "lm" if spec.plain_lm_only else "lm-kv") for f, (_, spec) in NATIVE.items()]
# ... and a classifier, in the first format that exports one
CASES = DECODERS + [(next(f for f, (_, spec) in NATIVE.items() if not spec.plain_lm_only), "classifier")]


def model_for(models, format: str, kind: str):
    return models[NATIVE[format][0], "classifier" if kind == "classifier" else "lm"]


def target(folder, format: str, kind: str):
    return folder / (f"{format}-{kind}" + NATIVE[format][1].suffix)


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


@pytest.mark.parametrize("format, kind", DECODERS)
def test_decoder_greedy_tokens_equal_native(config, models, exported, format, kind):
    model = model_for(models, format, kind)
    rows = prompts(config) if kind == "lm-kv" else prompts(config)[:1]  # a plain export takes unpadded prompts
    want = llmdual.generate(model, rows, 12)
    got = llmdual.generate(NativeDecoder(load(exported[format, kind].path, format)), rows, 12)
    assert [list(g) for g in got] == [list(w) for w in want]
    assert len(set(want[0].tolist())) > 2  # varied tokens: the comparison can tell decoders apart


def test_every_native_format_belongs_to_a_backend_that_exports_natively(models):
    for format, (name, spec) in NATIVE.items():
        assert info(name).offers("native-export") and spec.kind in ("file", "folder"), format
        assert format in export_formats(name) and format in formats_for(models[name, "lm"]), format
    assert all(native_formats(b) for b in backends("native-export"))
    assert export_formats() == ["onnx", *NATIVE]
    assert {f for f, _ in CASES} == set(NATIVE)  # every one is saved, reloaded and decoded by the tests above


@pytest.mark.parametrize("own, other", permutations(backends("native-export"), 2))
def test_formats_of_another_backend_are_refused(models, tmp_path, own, other):
    format = next(iter(native_formats(other)))
    message = (f"format '{format}' is not available for a {own} model; the {own} backend exports to "
               f"{', '.join(export_formats(own))}")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        llmdual.export(models[own, "lm"], target(tmp_path, format, "lm"), format=format)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", [b for b in backends() if not export_formats(b)])
def test_a_backend_without_exports_refuses_every_format(tiny, tmp_path, name):
    model = llmdual.build(tiny, name)
    with pytest.raises(ValueError, match=f"^format 'onnx' is not available for a {name} model; the {name} backend "
                                         "exports to nothing$"):
        llmdual.export(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_unknown_formats_are_refused(models, tmp_path):
    message = f"unknown export format 'tflite'; choose one of {', '.join(export_formats())}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        llmdual.export(next(iter(models.values())), tmp_path / "m", format="tflite")
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


@pytest.mark.parametrize("name", backends("onnx"))
def test_missing_onnx_extra_is_named(models, tmp_path, monkeypatch, name):
    absent = dataclasses.replace(info(name), onnx_needs=("llmdual_absent_package",))
    monkeypatch.setitem(contract.REGISTRY, name, absent)
    with pytest.raises(ImportError, match=r"needs llmdual_absent_package.*pip install 'llmdual\[onnx\]'"):
        llmdual.export(models[name, "lm"], tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("format, task", [("torch-export", "lm"), ("saved-model", "classifier")])
def test_failed_verification_raises_and_leaves_nothing(models, tmp_path, monkeypatch, format, task):
    package = backend_package(NATIVE[format][0])
    real_run = package.run_signature
    monkeypatch.setattr(package, "run_signature", lambda *a: [x + 0.5 for x in real_run(*a)])
    path = target(tmp_path, format, task)
    if format == "saved-model":  # a folder already there stays as it was, even with overwrite
        path.mkdir()
        (path / "kept").write_text("x")
    with pytest.raises(VerificationError, match=rf"does not match the native {NATIVE[format][0]} model .*"
                                                r"max abs diff 5\.000e-01"):
        llmdual.export(models[NATIVE[format][0], task], path, format=format, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ([path.name] if format == "saved-model" else [])
    if format == "saved-model":
        assert [p.name for p in path.iterdir()] == ["kept"]


def damaged(exported, tmp_path, format: str) -> dict[str, object]:
    """What ``load(path, format)`` is given by mistake: a plain file or folder of the wrong kind, a truncated or
    emptied copy of a real export, and another format's export of the same kind."""
    kind, suffix = NATIVE[format][1].kind, NATIVE[format][1].suffix
    real = next(exported[case].path for case in CASES if case[0] == format)
    plain = tmp_path / f"plain{suffix}"
    plain.write_text("not an export")
    cases: dict[str, object] = {"plain": plain}
    if kind == "folder":
        cases["a folder of other files"] = tmp_path
    if kind == "file":
        (tmp_path / f"truncated{suffix}").write_bytes(real.read_bytes()[: real.stat().st_size // 2])
        cases["truncated"] = tmp_path / f"truncated{suffix}"
    other = next((f for f, (_, spec) in NATIVE.items() if f != format and spec.kind == kind), None)
    if other:
        cases[other] = next(exported[case].path for case in CASES if case[0] == other)
    return cases


@pytest.mark.parametrize("format", NATIVE)
def test_loading_what_is_not_an_export_of_the_format_is_one_clear_error(exported, tmp_path, format):
    for what, path in damaged(exported, tmp_path, format).items():
        with pytest.raises(ValueError) as raised:
            load(path, format)
        message = str(raised.value)
        assert message.startswith(f"{path} is ") and format in message and "\n" not in message, (what, message)
        assert "\x1b" not in message, (what, message)


def test_onnx_export_of_a_quantized_torch_model_is_one_clear_error(tiny, tmp_path):
    """PyTorch's exporter cannot convert torchao's int8 layers: the error says so in one line and points to the
    int8 of ONNX files instead (Keras' int8 layers export, and are verified like any other)."""
    model = llmdual.build(tiny, "torch")
    llmdual.quantize(model)
    with pytest.raises(ValueError, match=r"^cannot export this quantized torch model \(.*\) to ONNX: the torch "
                                         r"exporter does not convert its int8 layers \(.*\); export the float32 "
                                         r"model and quantize the ONNX file with llmdual.onnx.quantize") as raised:
        llmdual.export(model, tmp_path / "int8.onnx")
    assert "\x1b" not in str(raised.value) and "\n" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []
