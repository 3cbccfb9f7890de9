import math

import numpy as np
import pytest

from llmdual.core.config import Config
from llmdual.core.weights import canonical_shapes, check_weights, from_hf_gpt2, init_weights


def test_init_is_deterministic_per_seed(tiny):
    a, b, c = init_weights(tiny, seed=1), init_weights(tiny, seed=1), init_weights(tiny, seed=2)
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["wte.weight"], c["wte.weight"])
    assert all(v.dtype == np.float32 for v in a.values())


def test_init_follows_the_gpt2_scheme():
    config = Config(vocab_size=4096, max_seq_len=128, d_model=256, n_layers=8, n_heads=4)
    w = init_weights(config, seed=0)
    # Sample std of >= 65k draws is within ~1% of the true std; 5% leaves a wide margin.
    assert abs(w["wte.weight"].std() / 0.02 - 1) < 0.05
    assert abs(w["h.3.mlp.c_fc.weight"].std() / 0.02 - 1) < 0.05
    residual = 0.02 / math.sqrt(2 * config.n_layers)
    assert abs(w["h.3.attn.c_proj.weight"].std() / residual - 1) < 0.05
    assert abs(w["h.3.mlp.c_proj.weight"].std() / residual - 1) < 0.05
    assert not w["h.0.attn.c_attn.bias"].any() and not w["ln_f.bias"].any()
    assert (w["h.1.ln_2.weight"] == 1).all()


def test_task_specific_names(tiny):
    lm, clf = canonical_shapes(tiny, "lm"), canonical_shapes(tiny, "classifier")
    assert "score.weight" not in lm and clf["score.weight"] == (tiny.d_model, tiny.num_classes)
    assert "lm_head.weight" not in lm
    assert canonical_shapes(tiny.replace(tie_embeddings=False), "lm")["lm_head.weight"] == (tiny.vocab_size, tiny.d_model)
    with pytest.raises(ValueError, match="unknown task 'seq2seq'.*lm.*classifier"):
        canonical_shapes(tiny, "seq2seq")


def test_check_weights_lists_missing_unexpected_and_misshaped(tiny):
    w = init_weights(tiny)
    del w["h.1.ln_1.bias"]
    w["extra.weight"] = np.zeros(3)
    w["wpe.weight"] = np.zeros((3, 3))
    with pytest.raises(ValueError) as err:
        check_weights(w, tiny)
    message = str(err.value)
    assert "missing ['h.1.ln_1.bias']" in message
    assert "unexpected ['extra.weight']" in message
    assert "wpe.weight: got (3, 3), expected (64, 64)" in message


def _hf_state(config, published: bool):
    """A state dict spelled as HF's GPT2LMHeadModel.state_dict() or as the published checkpoint files."""
    w = init_weights(config, seed=5)
    if published:
        state = dict(w)
        for i in range(config.n_layers):
            state[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, config.max_seq_len, config.max_seq_len), np.float32))
            state[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    else:
        state = {"transformer." + n: v for n, v in w.items()}
        state["lm_head.weight"] = w["wte.weight"]
    return w, state


@pytest.mark.parametrize("published", [False, True])
def test_from_hf_gpt2_accepts_both_spellings(published):
    config = Config(vocab_size=300, max_seq_len=32, d_model=128, n_layers=2, n_heads=2)
    w, state = _hf_state(config, published)
    got_config, got = from_hf_gpt2(state)  # no hf_config: 64-wide heads, eps 1e-5
    assert got_config == config
    assert all(np.array_equal(got[n], w[n]) for n in w)


def test_from_hf_gpt2_reads_hf_config(tiny):
    _, state = _hf_state(tiny, published=False)
    config, _ = from_hf_gpt2(state, {"n_head": 4, "layer_norm_epsilon": 1e-6, "n_positions": 64})
    assert (config.n_heads, config.norm_eps) == (4, 1e-6)


def test_from_hf_gpt2_untied_head(tiny):
    w, state = _hf_state(tiny, published=False)
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    config, got = from_hf_gpt2(state, {"n_head": 4})
    assert config.tie_embeddings is False
    assert np.array_equal(got["lm_head.weight"], w["wte.weight"] + 1)


def test_from_hf_gpt2_rejects_foreign_dicts():
    with pytest.raises(ValueError, match="not a GPT-2 state dict"):
        from_hf_gpt2({"encoder.weight": np.zeros(3)})
