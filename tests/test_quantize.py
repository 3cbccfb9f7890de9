"""Native int8 (``llmdual.quantize``) in every backend that offers it: torchao in PyTorch, ``model.quantize("int8")``
in Keras. Close to float32, still generating through the static KV cache, refusing what it cannot do, and the
quality measure itself."""

from itertools import combinations, permutations

import numpy as np
import pytest

import llmdual
from llmdual.bench import expected, runner
from llmdual.bench.engines import table as engines
from llmdual.bench.report import verdict
from llmdual.bench.report.tables import int8_table
from llmdual.bench.settings import BenchSettings, Case
from llmdual.contract import backends
from llmdual.quantize import quality, weight_bytes

BACKENDS = backends("int8")
CONFIG = llmdual.Config.preset("tiny")
# int8 with one scale per output channel (weights) and per token (activations) rounds each matmul input to ~1/254 of
# its range; through the tiny preset's two blocks the logits of its random-init model move by ~0.5% of their
# largest magnitude (measured 0.46% in PyTorch, 0.58% in Keras). 2% still catches a wrong scale or a layer left
# unquantized-but-broken, which move them by far more.
RELATIVE_TOL = 0.02
TOP1_FLOOR = 0.95  # argmax kept on at least 95% of positions (measured 100% here)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(0, CONFIG.vocab_size, (2, 32))


@pytest.fixture(scope="module", params=BACKENDS)
def pair(request, ids):
    """(backend, float32 logits, quantized model) per backend."""
    model = llmdual.build(CONFIG, request.param, seed=0)
    reference = llmdual.forward(model, ids)
    assert llmdual.quantize(model, "int8") is model  # in place
    return request.param, reference, model


def test_forward_close_to_float32(pair, ids):
    _, reference, model = pair
    logits = llmdual.forward(model, ids)
    assert logits.dtype == np.float32 and logits.shape == reference.shape
    diff = np.abs(logits - reference).max()
    assert 0 < diff <= RELATIVE_TOL * np.abs(reference).max()  # > 0: the projections really are int8
    assert (logits.argmax(-1) == reference.argmax(-1)).mean() >= TOP1_FLOOR


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_classifier_quantizes_too(backend, ids):
    model = llmdual.build(CONFIG, backend, task="classifier", seed=0)
    mask = np.ones_like(ids)
    reference = llmdual.forward(model, ids, mask)
    logits = llmdual.forward(llmdual.quantize(model), ids, mask)  # its ``score`` head is int8 as well
    assert 0 < np.abs(logits - reference).max() <= RELATIVE_TOL * np.abs(reference).max()  # measured 0.8%


def test_generation_through_the_static_cache(pair):
    backend, _, model = pair
    prompt = [[5, 17, 42, 9]]
    cached = llmdual.generate(model, prompt, 12)[0]
    # per-token activation scales do not depend on the other tokens: the cache gives the recomputed tokens
    assert np.array_equal(cached, llmdual.generate(model, prompt, 12, use_cache=False)[0])
    compiled = llmdual.contract.backend(backend).decoder(model, compile=True)
    assert np.array_equal(cached, llmdual.generate(compiled, prompt, 12)[0])


@pytest.mark.parametrize("a, b", combinations(BACKENDS, 2))
def test_both_backends_keep_the_same_argmax(ids, a, b):
    """The two schemes match in meaning: their int8 models agree with each other as closely as with float32."""
    logits = {}
    for backend in (a, b):
        model = llmdual.quantize(llmdual.build(CONFIG, backend, seed=0))
        logits[backend] = llmdual.forward(model, ids)
    reference = llmdual.forward(llmdual.build(CONFIG, a, seed=0), ids)
    assert np.abs(logits[a] - logits[b]).max() <= 2 * RELATIVE_TOL * np.abs(reference).max()
    assert (logits[a].argmax(-1) == logits[b].argmax(-1)).mean() >= TOP1_FLOOR


def test_weight_bytes_shrink_by_the_projections(pair):
    backend, _, model = pair
    c = CONFIG
    shapes = [(c.d_model, 3 * c.d_model), (c.d_model, c.d_model), (c.d_model, c.d_ff), (c.d_ff, c.d_model)]
    matrix = c.n_layers * sum(i * o for i, o in shapes)
    channels = c.n_layers * sum(o for _, o in shapes)
    fp32 = 4 * c.parameter_count()
    assert weight_bytes(llmdual.build(c, backend)) == fp32
    # each projection weight: 4 bytes -> 1, plus a float32 scale per output channel; torchao also keeps an int8
    # zero point per channel (all 0: symmetric)
    expected = fp32 - 3 * matrix + 4 * channels + (channels if backend == "torch" else 0)
    assert weight_bytes(model) == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_refusals(backend, tmp_path):
    model = llmdual.build(CONFIG, backend)
    with pytest.raises(ValueError, match=r"unknown quantization scheme 'int4'; choose one of \['int8'\]"):
        llmdual.quantize(model, "int4")
    llmdual.add_lora(model, rank=2)
    with pytest.raises(ValueError, match="unmerged LoRA adapters: llmdual.merge_lora"):
        llmdual.quantize(model)
    llmdual.merge_lora(model)
    weights = llmdual.get_weights(model)
    llmdual.quantize(model)
    with pytest.raises(ValueError, match=r"already quantized \(int8\)"):
        llmdual.quantize(model)
    with pytest.raises(ValueError, match="save the float32 model"):
        llmdual.save(model, tmp_path / "int8.safetensors")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"take llmdual.get_weights\(model\) before llmdual.quantize"):
        llmdual.get_weights(model)
    with pytest.raises(ValueError, match="set them on a float32 model"):
        llmdual.set_weights(model, weights)
    with pytest.raises(ValueError, match="cannot train it: the model is quantized"):
        llmdual.train(model, np.zeros(4096, dtype=np.int64), llmdual.TrainConfig(steps=1, progress=False))
    with pytest.raises(ValueError, match="cannot add LoRA adapters: the model is quantized"):
        llmdual.add_lora(model, rank=2)
    with pytest.raises(TypeError, match="expected an llmdual model"):
        llmdual.quantize(object())


@pytest.mark.parametrize("src, dst", permutations(BACKENDS, 2))
def test_save_then_quantize_after_load_is_the_way_round(tmp_path, ids, src, dst):
    """What the refusal points to: the float32 file reloads into either backend and quantizes to the same logits
    (bit for bit in its own backend, the same argmax in the other)."""
    model = llmdual.build(CONFIG, src, seed=3)
    path = llmdual.save(model, tmp_path / "fp32.safetensors")
    direct = llmdual.forward(llmdual.quantize(model), ids)
    assert np.array_equal(llmdual.forward(llmdual.quantize(llmdual.load(path, src)), ids), direct)
    other = llmdual.forward(llmdual.quantize(llmdual.load(path, dst)), ids)
    assert (other.argmax(-1) == direct.argmax(-1)).mean() >= TOP1_FLOOR


def test_quality_against_hand_computed_figures():
    V = 4
    y = np.array([[0, 1, -100]])
    uniform = np.zeros((1, 3, V), np.float32)  # perplexity exactly V
    peaked = uniform.copy()
    peaked[0, 0, 0] = peaked[0, 1, 2] = np.log(3.0)  # p(target) = 3/6 at t=0 (right), 1/6 at t=1 (wrong argmax)
    q = quality(lambda x: uniform, lambda x: peaked, [(np.zeros((1, 3), np.int64), y)])
    assert q.perplexity == pytest.approx(4.0)
    assert q.quantized_perplexity == pytest.approx(np.sqrt(2.0 * 6.0))  # exp(mean(log 2, log 6))
    assert q.perplexity_delta == pytest.approx(np.sqrt(12.0) / 4.0 - 1.0)
    assert q.tokens == 2 and q.max_abs_logit_diff == pytest.approx(np.log(3.0))
    # argmax of all-zero logits is 0: kept at t=0 (peaked: 0), lost at t=1 (peaked: 2); t=2 is ignored
    assert q.top1_agreement == 0.5
    with pytest.raises(ValueError, match="no targets"):
        quality(lambda x: uniform, lambda x: uniform, [(np.zeros((1, 3), np.int64), np.full((1, 3), -100))])


BENCH_CONFIG = CONFIG.replace(vocab_size=512)  # the quality measure trains a BPE tokenizer: >= 258 tokens


BENCH_SETTINGS = BenchSettings(preset="tiny", config_override=BENCH_CONFIG, batch_sizes=(2,), seq_lens=(8,),
                               new_tokens=3, warmup=0, repeats=2, device="cpu", threads=1)


def test_int8_engines_are_checked_timed_and_measured(tmp_path):
    """Both int8 engines pass the int8 gate against PyTorch float32 and report sizes and quality; the same run
    held to float32's tolerance is refused, so the gate still bites."""
    path = expected.save(tmp_path / "want.npz", expected.compute(BENCH_SETTINGS, 2, 8, ["infer", "generate"]))
    specs = [Case(e, w, BENCH_SETTINGS, 2, 8, str(path)) for e in ("torch-int8", "keras-int8")
             for w in ("infer", "generate")]
    records = runner.run_cases(specs, tmp_path / "runs.jsonl", timeout_s=180, log=lambda line: None)
    for record in records:
        assert record.status == "ok", (record.engine, record.workload, record.reason)
        s = record.scalars
        assert 0 < s["max_abs_diff"] <= engines.INT8_TOLERANCE and s["tolerance"] == engines.INT8_TOLERANCE
        assert s["weights_mb"] < s["fp32_weights_mb"] == 4 * BENCH_CONFIG.parameter_count() / 2**20
        assert abs(s["perplexity_delta"]) < 0.01 and s["top1_agreement"] >= TOP1_FLOOR
    _, reason = expected.check("infer", {"logits": np.zeros((1,))}, {"infer.logits": np.ones((1,))},
                               engines.INT8_TOLERANCE)
    assert "> tolerance 0.2" in reason
    doc = {"cases": [r.to_dict() for r in records]}
    header, rows = int8_table(doc)
    assert [row[0] for row in rows] == ["torch-int8", "keras-int8"] and "top-1 agreement" in header


def test_int8_engines_stay_out_of_the_default_run_and_the_verdict():
    assert set(engines.QUANTIZED_ENGINES) == {"torch-int8", "keras-int8"}
    assert not set(engines.QUANTIZED_ENGINES) & set(engines.LLMDUAL_ENGINES)
    assert engines.is_quantized("torch-int8") and not engines.is_quantized("torch-eager")
    # greedy tokens are compared at float32's tolerance only: an int8 near-tie may flip
    want = {"generate.b1.tokens": np.array([[1, 2, 3]]), "generate.b1.logits": np.zeros((1, 4), np.float32)}
    got = {"b1.tokens": np.array([[1, 2, 4]]), "b1.logits": np.full((1, 4), 0.1, np.float32)}
    assert expected.check("generate", got, want, engines.INT8_TOLERANCE)[1] is None
    assert "greedy tokens" in expected.check("generate", got, want, 1e-4)[1]
    group = {"workload": "infer", "metric": "tokens_per_s",
             "entries": [{"engine": "torch-int8"}, {"engine": "torch-eager"}]}
    [kept] = verdict.groups_of({"summary": {"groups": [group]}})
    assert kept["entries"] == [{"engine": "torch-eager"}]
    rows = {"cases": [{"engine": "torch-eager", "status": "ok", "scalars": {"weights_mb": 20.0}}]}
    assert int8_table(rows)[1] == []  # no int8 engine: no int8 table
