"""The reference GPT-2s of the performance bar, loaded with llmdual's canonical weights, compute llmdual's logits.

This is what makes ``benchmarks/perf_bar.py`` a same-weights comparison: Hugging Face's and keras-hub's own
loaders read the checkpoint ``write_hf_checkpoint`` makes from canonical weights, and nanoGPT's layout
conversion is checked against a file shaped like its ``model.py``.
"""

import numpy as np
import pytest

import llmdual
from llmdual.bench import reference


@pytest.fixture
def weights(tiny):
    return llmdual.weights.init_weights(tiny, "lm", seed=0)


@pytest.fixture
def checkpoint(tiny, weights, tmp_path):
    return reference.write_hf_checkpoint(tiny, weights, tmp_path / "hf")


def test_hf_gpt2_gives_llmdual_logits(tiny, weights, checkpoint, ids):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    model = reference.build_hf(checkpoint)
    with torch.no_grad():
        logits = model(torch.from_numpy(ids)).logits.numpy()
    expected = llmdual.forward(llmdual.build(tiny, "torch", weights=weights), ids)
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)


def test_keras_hub_gpt2_gives_llmdual_logits(tiny, weights, checkpoint, ids):
    pytest.importorskip("keras_hub")
    model = reference.build_keras_hub(checkpoint)
    logits = model.predict_on_batch({"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)})
    expected = llmdual.forward(llmdual.build(tiny, "keras", weights=weights), ids)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=0)


NANOGPT_LIKE = '''
from dataclasses import dataclass
import torch
from torch import nn
from torch.nn import functional as F

@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True

class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.attn = nn.Module()
        self.attn.c_attn, self.attn.c_proj = nn.Linear(c.n_embd, 3 * c.n_embd), nn.Linear(c.n_embd, c.n_embd)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(c.n_embd, 4 * c.n_embd), nn.Linear(4 * c.n_embd, c.n_embd)
        self.n_head = c.n_head

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in self.attn.c_attn(self.ln_1(x)).split(C, 2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn.c_proj(y)
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))

class GPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(c.vocab_size, c.n_embd),
            wpe=nn.Embedding(c.block_size, c.n_embd), h=nn.ModuleList([Block(c) for _ in range(c.n_layer)]),
            ln_f=nn.LayerNorm(c.n_embd)))
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx, targets=None):
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x)), None
'''


def test_nanogpt_layout_gives_llmdual_logits(tiny, weights, ids, tmp_path):
    """A stand-in with nanoGPT's names, layout and exact GELU (nanoGPT itself is not downloadable here)."""
    torch = pytest.importorskip("torch")
    (tmp_path / "model.py").write_text(NANOGPT_LIKE)
    model = reference.build_nanogpt(tmp_path, tiny, weights)
    with torch.no_grad():
        logits = model(torch.from_numpy(ids))[0].numpy()
    expected = llmdual.forward(llmdual.build(tiny, "torch", weights=weights), ids)
    assert np.abs(logits - expected).max() <= reference.NANOGPT_TOLERANCE


def test_untied_config_is_refused(tiny, weights, tmp_path):
    with pytest.raises(ValueError, match="tie"):
        reference.write_hf_checkpoint(tiny.replace(tie_embeddings=False), weights, tmp_path)


def test_bars_pick_the_fastest_generator_and_judge_the_target():
    from llmdual.bench import perf_bar

    fast, slow = [200.0, 210.0, 190.0], [90.0, 100.0, 110.0]
    records = [
        {"engine": "llmdual-torch", "status": "ok", "measurements": {"generate_tokens_per_s": slow}},
        {"engine": "llmdual-ort", "status": "ok", "measurements": {"generate_tokens_per_s": fast}},
        {"engine": "hf-torch", "status": "ok", "measurements": {"generate_tokens_per_s": slow}},
        {"engine": "kerashub-tf", "status": "failed", "reason": "boom"},
    ]
    bars = {bar["key"]: bar for bar in perf_bar.evaluate(perf_bar.pooled(records))}
    assert bars["generate"]["numerator"] == "llmdual-ort"
    assert bars["generate"]["ratio"] == pytest.approx(2.0)
    assert bars["generate"]["verdict"].startswith("pass")
    assert bars["torch-train"]["verdict"] == "not measured"


def test_table_only_engines_run_in_the_first_round_only():
    from llmdual.bench import perf_bar
    from llmdual.bench.runner import CaseSpec

    specs = [CaseSpec("hf-torch", "perf-bar"), CaseSpec("kerashub-jax", "perf-bar")]
    order = perf_bar.schedule(specs, rounds=3, seed=0)
    assert [(r, s.engine) for r, s in order].count((0, "kerashub-jax")) == 1
    assert sum(s.engine == "kerashub-jax" for _, s in order) == 1
    assert sum(s.engine == "hf-torch" for _, s in order) == 3


def test_paired_ratio_keeps_load_changes_between_rounds_out():
    from llmdual.bench import perf_bar

    quiet, busy = ([300.0, 310.0, 290.0], [150.0, 155.0, 145.0]), ([100.0, 90.0, 110.0], [50.0, 45.0, 55.0])
    ratio = perf_bar.paired_ratio([quiet, busy])
    assert ratio.ratio == pytest.approx(2.0)
    assert ratio.low <= 2.0 <= ratio.high
