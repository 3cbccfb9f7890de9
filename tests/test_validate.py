"""The one validation gate (``llmdual.core.validate``): every backend and runtime refuses the same bad inputs with the
same ``ValueError``, naming what was wrong and what is allowed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import llmdual
from llmdual import contract
from llmdual.contract import backends
from llmdual.core import config as config_module
from llmdual.core.recipe import check_batch
from llmdual.core.validate import check_inputs
from llmdual.core.weights import check_weights, init_weights
from llmdual.generate import decoder_for, left_pad
from llmdual.onnx.runtime import OnnxDecoder, logits, open_session


@pytest.fixture(scope="module")
def tiny() -> llmdual.Config:
    return llmdual.Config.preset("tiny")


@pytest.fixture(scope="module")
def models(tiny):
    return {(b, t): llmdual.build(tiny, b, t) for b in backends() for t in ("lm", "classifier")}


@pytest.fixture(scope="module")
def session(models, tmp_path_factory):
    """onnxruntime over the KV-cache export of the first backend that exports to ONNX."""
    path = tmp_path_factory.mktemp("onnx") / "lm-kv.onnx"
    llmdual.onnx.export_onnx(models[backends("onnx")[0], "lm"], path, kv_cache=True)
    return open_session(path)


@pytest.fixture(params=contract.targets("forward"))
def forward(request, models, session):
    """LM logits through one engine: a native backend's ``llmdual.forward`` or onnxruntime's ``logits``."""
    if request.param == "onnx":
        return lambda ids, mask=None: logits(session, ids, mask)
    return lambda ids, mask=None: llmdual.forward(models[request.param, "lm"], ids, mask)


@pytest.fixture(params=contract.targets("decoding"))
def decoder_model(request, models, session):
    """What ``llmdual.generate`` decodes with: a native LM or an ``OnnxDecoder`` over the KV-cache export."""
    return OnnxDecoder(session) if request.param == "onnx" else models[request.param, "lm"]


def ids_of(shape=(2, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.int64)


# ids -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, message",
    [
        (ids_of() + 0.9, r"input_ids must be an integer array \(token ids\), got a floating-point array"),
        (ids_of() > 100, "got a bool array"),
        (ids_of().astype(np.complex64), "got a complex array"),
        (ids_of()[0], r"input_ids must have shape \(batch, sequence\), got shape \(8,\)"),
        (np.zeros((2, 0), np.int64), r"input_ids is empty \(shape \(2, 0\)\)"),
        (np.zeros((0, 4), np.int64), r"input_ids is empty \(shape \(0, 4\)\)"),
        (np.full((1, 3), 256), r"token id 256 out of range: ids must be in \[0, 256\) \(vocab_size 256\)"),
        (np.full((1, 3), -1), r"token id -1 out of range: ids must be in \[0, 256\)"),
        (np.zeros((1, 65), np.int64), "sequence too long: 65 tokens > max_seq_len 64"),
    ],
)
def test_bad_ids_are_refused(forward, ids, message):
    with pytest.raises(ValueError, match=message):
        forward(ids)


def test_float_ids_are_refused_by_the_classifier_too(models, backend):
    with pytest.raises(ValueError, match="got a floating-point array: float, bool and complex ids are refused"):
        llmdual.forward(models[backend, "classifier"], np.full((1, 4), 1.9))


@pytest.mark.parametrize(
    "ids, mask",
    [(ids_of() + 0.5, None), (np.full((1, 2), 300), None), (ids_of(), np.full((2, 8), 2)), (ids_of(), np.zeros((2, 8)))],
)
def test_every_engine_gives_the_same_message(models, session, ids, mask):
    messages = {}
    runs = {b: lambda b=b: llmdual.forward(models[b, "lm"], ids, mask) for b in backends()}
    for name, run in {**runs, "onnx": lambda: logits(session, ids, mask)}.items():
        with pytest.raises(ValueError) as err:
            run()
        messages[name] = str(err.value)
    assert len(set(messages.values())) == 1, messages


def test_a_cache_past_the_context_is_refused(decoder_model):
    decoder = decoder_for(decoder_model)
    ids, mask = left_pad([[1] * 64], 0)
    _, state = decoder.prefill(ids, mask)
    with pytest.raises(ValueError, match=r"sequence too long: 65 tokens \(64 cached \+ 1 new\) > max_seq_len 64"):
        decoder.step(np.array([[2]]), np.ones((1, 65), np.int64), state)


# masks ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.full((2, 8), 2), r"attention_mask must hold only 0 \(padding\) and 1 \(real token\), got 2"),
        (np.full((2, 8), -1), "must hold only 0 .* got -1"),
        (np.full((2, 8), 0.5), "must hold only 0 .* got 0.5"),
        (np.array([[1] * 8, [0] * 8]), r"attention_mask row 1 is all 0: every row needs at least one real token"),
        (np.ones((2, 5), np.int64), r"attention_mask must have the shape of the ids .* = \(2, 8\), got \(2, 5\)"),
        (np.ones((2, 8), np.complex64), "attention_mask must be 0/1 integers or bools, got a complex array"),
    ],
)
def test_bad_masks_are_refused(forward, mask, message):
    with pytest.raises(ValueError, match=message):
        forward(ids_of(), mask)


@pytest.mark.parametrize("mask", [np.full((2, 8), 2), np.full((2, 8), 0.5), np.zeros((2, 8), np.int64)])
def test_classifier_pooling_refuses_reweighting_masks(models, backend, mask):
    with pytest.raises(ValueError, match="attention_mask (must hold only 0|row 0 is all 0)"):
        llmdual.forward(models[backend, "classifier"], ids_of(), mask)


def test_good_masks_still_run(forward):
    mask = np.array([[1] * 8, [1] * 3 + [0] * 5])
    for m in (mask, mask.astype(bool), mask.astype(np.float32)):
        assert np.isfinite(forward(ids_of(), m)).all()


# weights -------------------------------------------------------------------------------------------------------


def _weights_with(tiny, name, value):
    weights = init_weights(tiny)
    weights[name] = value
    return weights


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("wte.weight", lambda w: np.where(np.arange(w.size).reshape(w.shape) == 3, np.nan, w),
         r"not finite \['wte.weight: 1 NaN, 0 inf'\]"),
        ("ln_f.weight", lambda w: np.full_like(w, np.inf), r"not finite \['ln_f.weight: 0 NaN, 64 inf'\]"),
        ("ln_f.bias", lambda w: w.astype(np.int64), r"not floating-point \['ln_f.bias: dtype int64'\]"),
        ("wpe.weight", lambda w: w[:10], r"mis-shaped \['wpe.weight: got \(10, 64\), expected \(64, 64\)'\]"),
        ("h.0.ln_1.bias", lambda w: w[None], r"h.0.ln_1.bias: got \(1, 64\), expected \(64,\)"),
    ],
)
def test_bad_weights_are_refused_by_set_weights(tiny, models, backend, name, make, message):
    weights = _weights_with(tiny, name, make(init_weights(tiny)[name]))
    with pytest.raises(ValueError, match=message) as err:
        llmdual.set_weights(models[backend, "lm"], weights)
    assert "allowed: finite floating-point arrays of exactly the canonical shapes" in str(err.value)


def test_float64_overflowing_float32_is_not_finite(tiny):
    weights = _weights_with(tiny, "ln_f.bias", np.full(64, 1e300))
    with pytest.raises(ValueError, match="ln_f.bias: 0 NaN, 64 inf"):
        check_weights(weights, tiny)


def test_weights_of_other_float_widths_are_accepted_as_float32(tiny):
    weights = {n: v.astype(np.float16) for n, v in init_weights(tiny).items()}
    assert all(v.dtype == np.float32 for v in check_weights(weights, tiny).values())


# config --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_layers": True}, r"n_layers must be a positive integer \(not a bool or float\), got True"),
        ({"vocab_size": 256.0}, "vocab_size must be a positive integer"),
        ({"norm_eps": float("inf")}, "norm_eps must be a finite positive number, got inf"),
        ({"norm_eps": float("nan")}, "norm_eps must be a finite positive number, got nan"),
        ({"dropout": float("nan")}, r"dropout must be in \[0, 1\) \(a finite number\), got nan"),
        ({"dropout": True}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_config_values_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        llmdual.Config.preset("tiny", **change)


def test_numpy_numbers_are_accepted_and_stored_as_python_numbers():
    config = llmdual.Config.preset("tiny", vocab_size=np.int64(300), d_model=np.int32(64), norm_eps=np.float32(1e-5))
    assert type(config.vocab_size) is int and type(config.d_model) is int and type(config.norm_eps) is float
    assert llmdual.Config.from_json(config.to_json()) == config


@pytest.mark.parametrize("task", ["lm", "classifier"])
@pytest.mark.parametrize("tie", [True, False])
def test_parameter_count_matches_the_canonical_weights(task, tie):
    config = llmdual.Config.preset("tiny", tie_embeddings=tie, num_classes=5)
    assert config.parameter_count(task) == sum(v.size for v in init_weights(config, task).values())
    assert config.memory_bytes(task) > 16 * config.parameter_count(task)


def test_a_model_too_large_for_this_machine_is_refused_before_allocating(backend):
    huge = llmdual.Config.preset("tiny", vocab_size=10**9)
    with pytest.raises(ValueError, match=r"model too large for this machine: .* needs about [\d,]+ bytes .* "
                                         r"this machine has [\d,]+ bytes .* of RAM"):
        llmdual.build(huge, backend)


def test_loading_a_model_file_checks_the_size_too(tiny, models, tmp_path, monkeypatch):
    path = llmdual.save(models["torch", "lm"], tmp_path / "m.safetensors")
    monkeypatch.setattr(config_module, "total_memory_bytes", lambda: 1000)
    with pytest.raises(ValueError, match=r"model too large .* has 1,000 bytes"):
        llmdual.load(path, "keras")


def test_total_memory_is_read_from_the_system():
    total = config_module.total_memory_bytes()
    assert total is not None and total > 2**26


# training batches ----------------------------------------------------------------------------------------------


def _trainer(models, backend, grad_accum=1):
    cfg = llmdual.TrainConfig(steps=1, batch_size=2, grad_accum=grad_accum, warmup_steps=0, progress=False)
    return contract.backend(backend).trainer(models[backend, "lm"], cfg)


@pytest.mark.parametrize(
    "batch, grad_accum, message",
    [
        ((ids_of() + 0.5, ids_of()), 1, "input_ids must be an integer array .* got a floating-point array"),
        ((ids_of(), ids_of() + 0.5), 1, r"targets must be integers \(class ids, or -100 to skip\), got a floating"),
        ((ids_of(), np.full((2, 8), -100)), 1, "every one of the targets is -100 .* at least one counted target"),
        ((ids_of(), np.r_[[[-100] * 8], ids_of()[:1]]), 2, r"targets of micro-batch 0 \(of 2\) is -100"),
        ((ids_of(), np.full((2, 8), -5)), 1, r"targets value -5 out of range: must be \[0, 256\) or -100"),
        ((ids_of(), np.full((2, 8), 256)), 1, r"targets value 256 out of range: must be \[0, 256\) or -100"),
        ((ids_of(), ids_of()[:, :4]), 1, r"targets must have shape \(2, 8\), got \(2, 4\)"),
    ],
)
@pytest.mark.parametrize("backend", backends("training"))
def test_bad_training_batches_are_refused_by_every_trainer(models, backend, batch, grad_accum, message):
    with pytest.raises(ValueError, match=message):
        _trainer(models, backend, grad_accum).step(batch)


@pytest.mark.parametrize(
    "task, batch, message",
    [
        ("lm", (ids_of(), np.full((2, 8), 256)), r"targets value 256 out of range: must be \[0, 256\) or -100"),
        ("lm", (np.full((2, 8), 300), ids_of()), r"token id 300 out of range: ids must be in \[0, 256\)"),
        ("classifier", (ids_of(), np.ones((2, 8)), np.array([0, 2])), r"labels value 2 out of range: .*\[0, 2\)"),
        ("classifier", (ids_of(), np.full((2, 8), 3), np.array([0, 1])), "attention_mask must hold only 0"),
    ],
)
def test_check_batch_with_the_config_checks_ranges(tiny, task, batch, message):
    cfg = llmdual.TrainConfig(batch_size=2)
    with pytest.raises(ValueError, match=message):
        check_batch(batch, task, cfg, tiny)


@pytest.mark.parametrize(
    "targets, message",
    [(np.full((2, 8), -100), "every one of the targets is -100"), (np.full((2, 8), 256), "targets value 256")],
)
@pytest.mark.parametrize("backend", backends("gradients"))
def test_loss_and_grads_refuses_targets_the_same_way(models, backend, targets, message):
    with pytest.raises(ValueError, match=message):
        contract.backend(backend).loss_and_grads(models[backend, "lm"], ids_of(), targets)


# generation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, message",
    [
        ([], "prompt must be"),
        ([[1, 2], []], "prompt row 1 is empty"),
        (np.zeros((1, 0), np.int64), "prompt row 0 is empty"),
        ([5, -1], r"token id -1 out of range: ids must be in \[0, 256\)"),
        ([[5, 6], [300]], r"token id 300 out of range: ids must be in \[0, 256\)"),
        ([[1.5, 2]], "prompt row 0 must hold integer token ids"),
        ([[True, False]], "prompt row 0 must hold integer token ids"),
        (np.array([[1.0, 2.0]]), "1-D or 2-D integer array"),
    ],
)
def test_bad_prompts_are_refused_by_every_engine(decoder_model, prompt, message):
    with pytest.raises(ValueError, match=message):
        llmdual.generate(decoder_model, prompt, 3)


def test_onnx_decoding_refuses_what_the_native_model_refuses(session, models):
    for model in (models["torch", "lm"], OnnxDecoder(session)):
        with pytest.raises(ValueError, match="token id -1 out of range"):
            decoder_for(model).prefill(np.array([[-1, 4]]), np.ones((1, 2), np.int64))


# tokenizer -----------------------------------------------------------------------------------------------------


def test_a_lossy_tokenizer_file_is_refused_naming_the_path(tmp_path: Path):
    tokenizer = llmdual.Tokenizer.train(["def add(a, b):\n    return a + b\n"] * 5, vocab_size=260)
    path = tokenizer.save(tmp_path / "tokenizer.json")
    assert llmdual.Tokenizer.load(path).decode(tokenizer.encode("héllo 🎉")) == "héllo 🎉"
    doc = json.loads(path.read_text())
    doc["decoder"] = None
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf"{tmp_path}.*tokenizer is not lossless: .* decodes back as .*'decoder'"):
        llmdual.Tokenizer.load(path)


# the gate itself -----------------------------------------------------------------------------------------------


def test_explicit_positions_bound_the_length_instead_of_the_width(tiny):
    ids = np.zeros((2, 70), np.int64)
    mask = np.ones((2, 70), np.int64)
    mask[1, :] = 0
    mask[1, -3:] = 1
    with pytest.raises(ValueError, match="sequence too long: 70 tokens > max_seq_len 64"):
        check_inputs(ids, tiny, mask)
    mask[0, :10] = 0
    check_inputs(ids, tiny, mask, positions=np.maximum(mask.cumsum(1) - 1, 0))  # 60 real tokens: fits
    with pytest.raises(ValueError, match="sequence too long: 65 tokens > max_seq_len 64"):
        check_inputs(ids, tiny, None, positions=np.array([[64]]))
