"""ONNX export from every backend that offers it: verified against native, interchangeable, decodable with a KV cache,
quantizable, and strict about bad input. Every export here is of the tiny preset, made once per session."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import llmdual
from llmdual.contract import backend as backend_package
from llmdual.contract import backends
from llmdual.generate import generate
from llmdual.onnx.export import VerificationError, export_onnx, summary_table, verify
from llmdual.onnx.quantize import quantize
from llmdual.onnx.runtime import OnnxDecoder, logits, open_session

ATOL = 1e-4
KINDS = ("lm", "classifier", "lm-kv")
EXPORTERS = backends("onnx")


@pytest.fixture(scope="session")
def exports(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    results = {}
    for (backend, task), model in models.items():
        if backend not in EXPORTERS:
            continue
        results[backend, task] = llmdual.export_onnx(model, folder / f"{backend}-{task}.onnx")
        if task == "lm":
            results[backend, "lm-kv"] = export_onnx(model, folder / f"{backend}-lm-kv.onnx", kv_cache=True)
    return results


@pytest.fixture(scope="session")
def sessions(exports):
    return {key: open_session(r.path) for key, r in exports.items()}


def padded_mask(batch: int, seq: int, seed: int) -> np.ndarray:
    lengths = np.random.default_rng(seed).integers(1, seq + 1, batch)
    lengths[0] = seq
    return (np.arange(seq)[None] < lengths[:, None]).astype(np.int64)


@pytest.mark.parametrize("backend", EXPORTERS)
@pytest.mark.parametrize("kind", KINDS)
def test_export_result_describes_the_verified_file(exports, backend, kind):
    r = exports[backend, kind]
    assert r.path.is_file() and r.file_bytes == r.path.stat().st_size
    task = "classifier" if kind == "classifier" else "lm"
    assert (r.backend, r.task, r.kv_cache, r.opset, r.dynamic) == (backend, task, kind == "lm-kv", 18, True)
    proto = onnx.load(r.path)
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert r.node_count == len(proto.graph.node) and r.op_counts["MatMul"] >= 2
    assert len(r.max_abs_diff) >= 2 and max(r.max_abs_diff.values()) <= ATOL
    assert r.export_seconds > 0 and r.verify_seconds > 0
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*proto.graph.input, *proto.graph.output)}
    assert dims["input_ids"] == ["batch", "sequence"]
    if kind == "lm-kv":
        assert list(dims)[:3] == ["input_ids", "attention_mask", "position_ids"]
        assert dims["past.1.value"] == ["batch", 4, "past_sequence", 16]
        assert dims["present.0.key"] == ["batch", 4, "total_sequence", 16]
        assert dims["logits"] == ["batch", "sequence", 256]
    elif kind == "classifier":
        ids = ["batch", "sequence"]
        assert dims == {"input_ids": ids, "attention_mask": ids, "logits": ["batch", 2]}
    else:
        assert dims == {"input_ids": ["batch", "sequence"], "logits": ["batch", "sequence", 256]}


@pytest.mark.parametrize("backend", EXPORTERS)
@pytest.mark.parametrize("task", ["lm", "classifier"])
@pytest.mark.parametrize("shape", [(3, 10), (1, 64)])
def test_onnxruntime_matches_native(models, sessions, backend, task, shape):
    ids = np.random.default_rng(shape[1]).integers(0, 256, shape)
    mask = padded_mask(*shape, seed=1) if task == "classifier" else None
    native = llmdual.forward(models[backend, task], ids, mask)
    for key in [(backend, task)] + ([(backend, "lm-kv")] if task == "lm" else []):
        got = logits(sessions[key], ids, mask)
        assert got.shape == native.shape
        assert np.abs(got - native).max() <= ATOL, key


@pytest.mark.parametrize("a, b", combinations(EXPORTERS, 2))
@pytest.mark.parametrize("task", ["lm", "classifier"])
def test_exports_of_different_backends_agree(models, exports, sessions, task, a, b):
    ids = np.random.default_rng(7).integers(0, 256, (4, 21))
    mask = padded_mask(4, 21, seed=2) if task == "classifier" else None
    diff = np.abs(logits(sessions[a, task], ids, mask) - logits(sessions[b, task], ids, mask)).max()
    assert diff <= ATOL
    # each file also verifies against the other framework's native model
    assert max(verify(exports[a, task].path, models[b, task]).values()) <= ATOL
    assert max(verify(exports[b, task].path, models[a, task]).values()) <= ATOL


def test_kv_export_prefills_from_an_empty_past(models, sessions, config):
    ids = np.random.default_rng(3).integers(0, 256, (2, 9))
    empty = np.zeros((2, config.n_heads, 0, config.head_dim), np.float32)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.tile(np.arange(9), (2, 1))}
    feeds |= {f"past.{i}.{p}": empty for i in range(config.n_layers) for p in ("key", "value")}
    for backend in EXPORTERS:
        out = sessions[backend, "lm-kv"].run(None, feeds)
        assert np.abs(out[0] - llmdual.forward(models[backend, "lm"], ids)).max() <= ATOL
        assert out[1].shape == (2, config.n_heads, 9, config.head_dim)


def test_greedy_tokens_identical_through_native_and_every_file(models, sessions):
    prompt = np.array([[5, 17, 99, 3], [42, 8, 1, 200]])
    first, *others = EXPORTERS
    reference = generate(models[first, "lm"], prompt, 24)
    assert len({int(t) for row in reference for t in row}) > 3  # varied tokens, so agreement means something
    engines = {**{f"native {b}": models[b, "lm"] for b in others},
               **{f"{b} {k}": OnnxDecoder(sessions[b, k]) for b in EXPORTERS for k in ("lm", "lm-kv")}}
    for name, engine in engines.items():
        tokens = generate(engine, prompt, 24)
        assert all(np.array_equal(a, b) for a, b in zip(tokens, reference)), name


def test_kv_cache_decoder_matches_the_no_cache_path(models, sessions):
    ragged = [[5, 17, 99, 3, 7, 7], [42], [8, 1, 200]]  # left-padded: needs the mask and position ids
    native = generate(models["keras", "lm"], ragged, 20, use_cache=False)
    for backend in EXPORTERS:
        session = sessions[backend, "lm-kv"]
        cached = generate(OnnxDecoder(session), ragged, 20)
        recomputed = generate(OnnxDecoder(session, use_cache=False), ragged, 20)
        for a, b, c in zip(cached, recomputed, native):
            assert np.array_equal(a, b) and np.array_equal(a, c), backend
    single = [3, 1, 4, 1, 5]  # the plain export (recomputing) agrees with the cache export
    plain = generate(OnnxDecoder(sessions["keras", "lm"]), single, 20)
    cached = generate(OnnxDecoder(sessions["torch", "lm-kv"]), single, 20)
    assert np.array_equal(plain, cached)


def test_decoder_rejects_what_it_cannot_run(sessions, tmp_path):
    with pytest.raises(ValueError, match="needs a task 'lm' export, got task 'classifier'"):
        generate(OnnxDecoder(sessions["torch", "classifier"]), [1, 2, 3], 4)
    with pytest.raises(ValueError, match="no attention_mask input.*kv_cache=True"):
        generate(OnnxDecoder(sessions["keras", "lm"]), [[1, 2, 3], [4]], 4)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    foreign = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                                                            [onnx.helper.make_tensor_value_info("y", 1, [1])]))
    onnx.save(foreign, tmp_path / "foreign.onnx")
    with pytest.raises(ValueError, match="not an llmdual ONNX export"):
        OnnxDecoder(tmp_path / "foreign.onnx")
    with pytest.raises(TypeError, match=r"OnnxDecoder\(session\)"):
        generate(sessions["torch", "lm-kv"], [1, 2, 3], 4)


@pytest.mark.parametrize("task", ["lm", "classifier"])
def test_quantize_shrinks_the_file_and_reports_quality(exports, task, tmp_path):
    rng = np.random.default_rng(0)
    if task == "lm":
        batches = [(rng.integers(0, 256, (4, 32)), rng.integers(0, 256, (4, 32))) for _ in range(2)]
    else:
        batches = [(rng.integers(0, 256, (8, 16)), padded_mask(8, 16, seed=3), rng.integers(0, 2, 8))]
    result = quantize(exports["keras", task].path, tmp_path / "int8.onnx", batches)
    assert result.path.is_file() and result.bytes_after == result.path.stat().st_size
    assert result.bytes_before == exports["keras", task].file_bytes and result.size_ratio < 0.6
    assert result.metric == ("perplexity" if task == "lm" else "accuracy")
    assert np.isfinite(result.before) and abs(result.after - result.before) <= 0.1 * result.before
    assert result.top1_agreement >= 0.8 and 0 < result.max_abs_logit_diff < 1.0


def test_static_export_has_fixed_shapes(models, tmp_path):
    result = export_onnx(models["keras", "classifier"], tmp_path / "static.onnx", dynamic=False, shape=(2, 5))
    proto = onnx.load(result.path)
    assert [d.dim_value for d in proto.graph.input[1].type.tensor_type.shape.dim] == [2, 5]
    assert list(result.max_abs_diff) == ["2x5"] and result.max_abs_diff["2x5"] <= ATOL


def test_summary_table_lists_every_export(exports):
    text = summary_table(list(exports.values()))
    lines = text.splitlines()
    assert len(lines) == 2 + len(exports) and "kv-cache" in text
    assert all(f"| {b} " in text for b in EXPORTERS)
    assert "max abs diff" in lines[0] and "nodes" in lines[0]


@pytest.mark.parametrize("backend", EXPORTERS)
@pytest.mark.parametrize("opset", [7, 99])
def test_unsupported_opset_errors_and_writes_nothing(models, tmp_path, backend, opset):
    opsets = backend_package(backend).onnx_opsets()
    assert 18 in opsets and opset not in opsets  # the default opset is one every exporter emits
    message = f"opset {opset} is not supported by the {backend} exporter; allowed: {opsets[0]}..{opsets[-1]}"
    with pytest.raises(ValueError, match=message):
        export_onnx(models[backend, "lm"], tmp_path / "m.onnx", opset=opset)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("thing", [torch.nn.Linear(2, 2), "model.pt", None])
def test_non_llmdual_model_is_a_type_error(thing, tmp_path):
    with pytest.raises(TypeError, match="expected an llmdual model"):
        export_onnx(thing, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_bad_paths_error_before_exporting(models, tmp_path):
    model = models["torch", "lm"]
    with pytest.raises(FileNotFoundError, match="folder .*missing does not exist"):
        export_onnx(model, tmp_path / "missing" / "m.onnx")
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        export_onnx(model, tmp_path)
    with pytest.raises(PermissionError, match="is not writable"):
        export_onnx(model, Path("/sys/llmdual-test.onnx"))  # read-only even for root
    assert list(tmp_path.iterdir()) == []


def test_bad_options_error(models, tmp_path):
    with pytest.raises(ValueError, match="kv_cache=True needs an LM"):
        export_onnx(models["torch", "classifier"], tmp_path / "m.onnx", kv_cache=True)
    with pytest.raises(ValueError, match="kv_cache=True needs dynamic=True"):
        export_onnx(models["torch", "lm"], tmp_path / "m.onnx", dynamic=False, kv_cache=True)
    with pytest.raises(TypeError, match="opset must be an integer"):
        export_onnx(models["torch", "lm"], tmp_path / "m.onnx", opset="18")
    assert list(tmp_path.iterdir()) == []


def test_failed_verification_raises_with_figures_and_leaves_no_file(models, tmp_path, monkeypatch):
    from llmdual.backends.keras import export as keras_export

    real_run = keras_export.run
    monkeypatch.setattr(keras_export, "run", lambda *a: [x + 0.5 for x in real_run(*a)])
    with pytest.raises(VerificationError, match=r"does not match the native keras model .*max abs diff 5\.000e-01"):
        export_onnx(models["keras", "classifier"], tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
