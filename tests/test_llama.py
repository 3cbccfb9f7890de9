"""The Llama family (RMSNorm, SwiGLU, RoPE, grouped-query attention, Qwen2's q/k/v biases) against Hugging Face's
own ``LlamaForCausalLM``, ``Qwen2ForCausalLM`` and ``LlamaForSequenceClassification``, random-initialised from
configs used nowhere else (odd widths, GQA 6:2, MQA, an untied head, rope_theta 5000): logits in every backend,
greedy generation token for token, the static cache, both directions of the Hugging Face conversion, and
torch-vs-Keras training-step parity; plus the Config's validation of every architecture field."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llmdual
from llmdual.contract import backend as backend_package
from llmdual.contract import backends
from llmdual.core.config import Config
from llmdual.generate import left_pad
from llmdual.parity.core import GRAD_RTOL, LOGITS_ATOL, LOSS_RTOL

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# float32 logits of order 5 (HF's initializer_range 0.2, so attention and the MLP are far from linear): a few ulps
# of the logits' scale, as in parity; the float64 reference against HF run in float64 has only rounding left
F64_ATOL = 1e-10
SHAPE = {"vocab_size": 97, "hidden_size": 48, "intermediate_size": 72, "num_hidden_layers": 2,
         "num_attention_heads": 6, "max_position_embeddings": 48, "initializer_range": 0.2,
         "bos_token_id": None, "eos_token_id": None, "pad_token_id": 0}
FAMILIES = {
    "llama-gqa-untied": ("LlamaForCausalLM", "LlamaConfig",
                         {"num_key_value_heads": 2, "rope_theta": 5000.0, "tie_word_embeddings": False}),
    "qwen2-mqa-tied": ("Qwen2ForCausalLM", "Qwen2Config", {"num_key_value_heads": 1, "tie_word_embeddings": True}),
}
IDS = np.random.default_rng(5).integers(1, 97, (2, 13))


def hf_model(family: str, dtype=None):
    architecture, config_class, extra = FAMILIES[family]
    torch.manual_seed(7)
    hf_config = getattr(transformers, config_class)(**SHAPE, **extra)
    if "rope_theta" in extra:  # transformers 5 keeps the base in rope_parameters
        hf_config.rope_parameters = {"rope_type": "default", "rope_theta": extra["rope_theta"]}
    model = getattr(transformers, architecture)(hf_config).eval()
    return model.to(dtype) if dtype is not None else model


def hf_logits(model, ids, mask=None) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask))
    return out.logits.numpy()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    model = hf_model(request.param)
    config, weights = llmdual.from_hf(model.config, model.state_dict())
    return request.param, model, config, weights


def test_the_conversion_reads_the_architecture_from_the_hf_config(family):
    name, _, config, _ = family
    assert (config.norm, config.mlp, config.positions, config.d_ff) == ("rms", "swiglu", "rotary", 72)
    if name.startswith("llama"):
        assert (config.kv_heads, config.rope_theta, config.tie_embeddings, config.qkv_biased) == (2, 5000.0, False, False)
    else:
        assert (config.kv_heads, config.rope_theta, config.tie_embeddings, config.qkv_biased) == (1, 10000.0, True, True)
        assert not config.attn_bias


@pytest.mark.parametrize("backend", backends("forward"))
def test_logits_match_hugging_face_in_every_backend(family, backend):
    _, hf, config, weights = family
    mask = np.ones_like(IDS)
    mask[1, 9:] = 0  # right padding: the real tokens' logits do not depend on it
    want = hf_logits(hf, IDS, mask)
    got = llmdual.forward(llmdual.build(config, backend, weights=weights), IDS, mask)
    assert np.abs(want).max() > 1.0  # far from zero: the tolerance is meaningful
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=LOGITS_ATOL)
    np.testing.assert_allclose(got[1, :9], want[1, :9], rtol=0, atol=LOGITS_ATOL)


def in_float64(hf, theta: float, head_dim: int):
    """``hf`` computing every step in float64: HF keeps its rotary angles and RMSNorm in float32 even in a float64
    model (about 1e-6 off in the logits), where the reference computes all in float64. Same formulas as HF's."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)

    def rotary(x, position_ids):
        angles = position_ids[..., None].double() * inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def rms_norm(norm):
        return lambda x: norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))

    hf.model.rotary_emb.forward = rotary
    for module in hf.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = rms_norm(module)
    return hf


def test_the_float64_reference_matches_hugging_face_in_float64(family):
    name, _, config, weights = family
    hf = in_float64(hf_model(name, torch.float64), config.rope_theta, config.head_dim)
    want = hf_logits(hf, IDS)
    got = llmdual.forward(llmdual.build(config, "numpy", weights=weights), IDS)
    np.testing.assert_allclose(got, want, rtol=0, atol=F64_ATOL)


@pytest.mark.parametrize("backend", backends("decoding"))
def test_greedy_generation_equals_hugging_face_generate(family, backend):
    _, hf, config, weights = family
    prompt = [5, 17, 33, 2, 90]
    with torch.no_grad():
        want = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 5, dtype=torch.long), max_new_tokens=32,
                           min_new_tokens=32, do_sample=False)[0, 5:].numpy()
    got = llmdual.generate(llmdual.build(config, backend, weights=weights), np.array(prompt), 32, stop_at_eot=False)
    np.testing.assert_array_equal(np.asarray(got).reshape(-1), want)


@pytest.mark.parametrize("backend", backends("decoding"))
def test_the_static_cache_holds_kv_heads_and_equals_full_forward_passes(family, backend):
    """Ragged left-padded prompts: the prefill's and each step's logits against each row's own full forward pass
    (rotary positions restart at the first real token, as unpadded)."""
    _, _, config, weights = family
    model = llmdual.build(config, backend, weights=weights)
    decoder = backend_package(backend).decoder(model)
    prompts = [[7, 8, 9, 10, 11, 12], [40], [3, 2, 1]]
    ids, mask = left_pad(prompts, 0)
    logits, state = decoder.prefill(ids, mask, max_len=16)
    assert np.shape(state.cache[0][0]) == (3, config.kv_heads, 16, config.head_dim)
    rows = [list(p) for p in prompts]
    for _ in range(5):
        want = np.stack([llmdual.forward(model, np.array([row]))[0, -1] for row in rows])
        np.testing.assert_allclose(logits, want, rtol=0, atol=LOGITS_ATOL)
        token = want.argmax(-1)
        for row, t in zip(rows, token):
            row.append(int(t))
        mask = np.concatenate([mask, np.ones((3, 1), mask.dtype)], axis=1)
        logits, state = decoder.step(token[:, None], mask, state)


@pytest.mark.parametrize("backend", backends("forward"))
def test_to_hf_writes_a_folder_auto_model_loads_with_the_same_logits(tmp_path, backend):
    config = Config.preset("llama-tiny", n_kv_heads=1, tie_embeddings=False, qkv_bias=True, rope_theta=777.0)
    model = llmdual.build(config, backend, seed=4)
    folder = llmdual.to_hf(model, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(hf).__name__ == "Qwen2ForCausalLM"  # q/k/v biases alone: Qwen2's architecture
    np.testing.assert_allclose(hf_logits(hf, IDS), llmdual.forward(model, IDS), rtol=0, atol=LOGITS_ATOL)
    back, weights = llmdual.from_hf(folder)
    assert back == config.replace(pooling="last")
    assert all(np.array_equal(weights[n], w) for n, w in llmdual.get_weights(model).items())


@pytest.mark.parametrize("preset, architecture", [("llama-tiny", "LlamaForCausalLM"), ("tiny", "GPT2LMHeadModel")])
def test_to_hf_picks_the_architecture_and_save_pretrained_folders_load_back(tmp_path, preset, architecture):
    model = llmdual.build(Config.preset(preset), "torch", seed=2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(llmdual.to_hf(model, tmp_path / "out")).eval()
    assert type(hf).__name__ == architecture
    hf.save_pretrained(tmp_path / "saved")  # Hugging Face's own folder, read back by from_hf
    config, weights = llmdual.from_hf(tmp_path / "saved")
    np.testing.assert_allclose(llmdual.forward(llmdual.build(config, "torch", weights=weights), IDS[:, :8]),
                               hf_logits(hf, IDS[:, :8]), rtol=0, atol=LOGITS_ATOL)


def test_the_classifier_pools_the_last_real_token_as_llama_for_sequence_classification():
    torch.manual_seed(3)
    hf_config = transformers.LlamaConfig(**SHAPE, num_key_value_heads=3, num_labels=3, tie_word_embeddings=True)
    hf = transformers.LlamaForSequenceClassification(hf_config).eval()
    ids = IDS.copy()
    ids[1, 9:] = 0  # right padding with pad_token_id 0: HF finds the last real token from the ids, we from the mask
    mask = (np.arange(13) < np.array([[13], [9]])).astype(np.int64)
    state = hf.state_dict()
    config, weights = llmdual.from_hf(hf.config, {k: v for k, v in state.items() if k != "score.weight"})
    config = config.replace(num_classes=3)
    weights["score.weight"] = state["score.weight"].numpy().T  # HF's [out, in] to the canonical [in, out]
    with torch.no_grad():
        want = hf(torch.tensor(ids)).logits.numpy()
    for backend in backends("forward"):
        got = llmdual.forward(llmdual.build(config, backend, "classifier", weights=weights), ids, mask)
        np.testing.assert_allclose(got, want, rtol=0, atol=LOGITS_ATOL, err_msg=backend)


def test_training_step_parity_torch_vs_keras_on_llama_tiny():
    """Loss within LOSS_RTOL and every gradient within GRAD_RTOL of its tensor's scale, parity's tolerances."""
    config = Config.preset("llama-tiny")
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (2, 16))
    targets = np.roll(ids, -1, axis=1)
    results = {b: backend_package(b).loss_and_grads(llmdual.build(config, b, seed=1), ids, targets)
               for b in backends("gradients")}
    (la, ga), *others = results.values()
    assert len(results) >= 2
    for lb, gb in others:
        assert abs(la - lb) <= LOSS_RTOL * abs(la)
        assert sorted(ga) == sorted(gb)
        for name in ga:
            assert np.abs(ga[name] - gb[name]).max() <= GRAD_RTOL * np.abs(ga[name]).max(), name


def test_the_initializer_draws_the_llama_weights_bit_identically_in_every_backend():
    config = Config.preset("llama-tiny", qkv_bias=True)
    want = llmdual.init_weights(config, seed=9)
    assert "wpe.weight" not in want and "h.0.ln_1.bias" not in want and "h.0.attn.c_proj.bias" not in want
    assert want["h.0.attn.c_attn.weight"].shape == (64, 64 + 2 * 2 * 16) and want["h.0.mlp.c_fc.weight"].shape == (64, 352)
    for backend in backends("forward"):
        got = llmdual.get_weights(llmdual.build(config, backend, seed=9))
        assert all(np.array_equal(got[n], w) for n, w in want.items()), backend


@pytest.mark.parametrize("fields, message", [
    ({"n_kv_heads": 3}, r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"),
    ({"positions": "rotary", "d_model": 12, "n_heads": 4}, "rotary positions need an even head dim"),
    ({"rope_theta": 500.0}, "rope_theta .* is a rotary setting"),
    ({"norm": "batch"}, r"norm must be one of \['layer', 'rms'\]"),
    ({"mlp": "relu"}, r"mlp must be one of \['gelu', 'swiglu'\]"),
    ({"qkv_bias": "yes"}, "qkv_bias must be a bool or None"),
    ({"positions": "rotary", "rope_theta": -1.0}, "rope_theta must be a finite positive number"),
])
def test_bad_architectures_get_one_clear_line(fields, message):
    with pytest.raises(ValueError, match=message):
        Config.preset("tiny", **fields)


def test_hugging_face_features_llmdual_does_not_model_are_refused_by_name():
    llama = transformers.LlamaConfig(**SHAPE).to_dict()
    with pytest.raises(ValueError, match="rope type 'llama3'"):
        llmdual.from_hf({**llama, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 32.0}}, {})
    mistral = transformers.MistralConfig(**SHAPE, sliding_window=16).to_dict()
    with pytest.raises(ValueError, match="sliding_window 16"):
        llmdual.from_hf(mistral, {})
    with pytest.raises(ValueError, match="unsupported Hugging Face model_type 'bert'"):
        llmdual.from_hf({"model_type": "bert"}, {})
    with pytest.raises(ValueError, match="no Hugging Face architecture has norm='rms'"):
        llmdual.to_hf(llmdual.build(Config.preset("tiny", norm="rms"), "numpy"), "unused")


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 70), st.floats(allow_nan=True), st.text(max_size=6),
                   st.sampled_from(["layer", "rms", "gelu", "swiglu", "learned", "rotary", "mean", "last"]),
                   st.lists(st.integers(), max_size=2))
FIELDS = ["vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "d_ff", "dropout", "norm_eps",
          "tie_embeddings", "num_classes", "norm", "mlp", "positions", "rope_theta", "n_kv_heads", "attn_bias",
          "qkv_bias", "mlp_bias", "pooling", "bogus"]


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=8))
def test_any_config_dict_is_a_valid_config_or_one_clear_value_error(changes):
    base = {"vocab_size": 32, "max_seq_len": 16, "d_model": 16, "n_layers": 1, "n_heads": 2}
    try:
        config = Config.from_dict({**base, **changes})
    except ValueError as err:
        assert "\n" not in str(err) and ("invalid Config" in str(err) or "unknown Config fields" in str(err))
        return
    assert config.n_heads % config.kv_heads == 0 and config.d_model % config.n_heads == 0
    assert config.parameter_count() == sum(v.size for v in llmdual.init_weights(config).values())
