"""The reference implementations: rows of the one engine table that reproduce llmdual's numbers on the same
weights, and the performance bar as a view over the results of a run that includes them."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import llmdual
from llmdual.bench import command
from llmdual.bench.engines import reference_models as reference
from llmdual.bench.engines import table
from llmdual.bench.report import bars, results
from llmdual.bench.settings import BenchSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def weights(tiny):
    return llmdual.core.weights.init_weights(tiny, "lm", seed=0)


@pytest.fixture
def checkpoint(tiny, weights, tmp_path):
    return reference.write_hf_checkpoint(tiny, weights, tmp_path / "hf")


def test_hf_gpt2_gives_llmdual_logits(tiny, weights, checkpoint, ids):
    model = reference.build_hf(checkpoint)
    with torch.no_grad():
        logits = model(torch.from_numpy(ids)).logits.numpy()
    expected = llmdual.forward(llmdual.build(tiny, "torch", weights=weights), ids)
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)


def test_keras_hub_gpt2_gives_llmdual_logits_or_says_which_extra_is_missing(tiny, weights, checkpoint, ids):
    if importlib.util.find_spec("keras_hub") is None:
        for name in ("kerashub-tensorflow", "kerashub-tensorflow-xla", "kerashub-jax", "kerashub-torch"):
            assert "pip install 'llmdual[reference]'" in table.skip_reason(name)
        return
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
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        if targets is None:
            return logits[:, [-1], :], None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)
'''


def test_nanogpt_layout_gives_llmdual_logits(tiny, weights, ids, tmp_path):
    """A stand-in with nanoGPT's names, layout and exact GELU (nanoGPT itself is not downloadable here)."""
    (tmp_path / "model.py").write_text(NANOGPT_LIKE)
    model = reference.build_nanogpt(tmp_path, tiny, weights)
    with torch.no_grad():
        logits = model(torch.from_numpy(ids), torch.from_numpy(ids))[0].numpy()
    expected = llmdual.forward(llmdual.build(tiny, "torch", weights=weights), ids)
    assert np.abs(logits - expected).max() <= table.NANOGPT_TOLERANCE


def test_untied_config_is_refused(tiny, weights, tmp_path):
    with pytest.raises(ValueError, match="tie"):
        reference.write_hf_checkpoint(tiny.replace(tie_embeddings=False), weights, tmp_path)


def _run(engine, workload, metric, values, rnd=0, status="ok", reason=None):
    settings = {"config": llmdual.Config.preset("tiny").to_dict(), "batch_size": 2, "seq_len": 8, "device": "cpu"}
    return {"engine": engine, "workload": workload, "settings": settings, "round": rnd, "status": status,
            "reason": reason, "measurements": {metric: values} if values else {}}


def test_bars_pick_the_fastest_generator_and_judge_the_target():
    fast, slow = [200.0, 210.0, 190.0], [90.0, 100.0, 110.0]
    doc = results.build_document({}, {}, [
        _run("torch-eager", "generate", "tokens_per_s_b1", slow),
        _run("ort-torch-export", "generate", "tokens_per_s_b1", fast),
        _run("hf-eager", "generate", "tokens_per_s_b1", slow),
        _run("hf-eager", "train", "tokens_per_s", None, status="failed", reason="boom"),
    ])
    by_key = {bar["key"]: bar for bar in bars.evaluate(doc)}
    best = by_key["generate-best"]
    assert best["numerator"] == "ort-torch-export" and best["denominator"] == "hf-eager"
    assert best["ratio"] == pytest.approx(2.0) and best["verdict"].startswith("pass")
    assert by_key["torch-eager-generate"]["ratio"] == pytest.approx(1.0)
    assert by_key["torch-eager-generate"]["verdict"].startswith("pass")  # 1.0 >= 0.95
    train = by_key["torch-eager-train"]
    assert train["verdict"] == "not measured"
    assert "torch-eager train: not run" in train["reason"] and "boom" in train["reason"]


def test_bars_pair_rounds_so_load_changes_between_rounds_stay_out():
    quiet, busy = ([300.0, 310.0, 290.0], [150.0, 155.0, 145.0]), ([100.0, 90.0, 110.0], [50.0, 45.0, 55.0])
    ratio = bars.paired_ratio([quiet, busy])
    assert ratio.ratio == pytest.approx(2.0)
    assert ratio.low <= 2.0 <= ratio.high
    doc = results.build_document({}, {}, [_run(e, "train", "tokens_per_s", v, rnd)
                                          for rnd, pair in enumerate((quiet, busy))
                                          for e, v in zip(("torch-eager", "hf-eager"), pair)])
    [bar] = [b for b in bars.evaluate(doc) if b["key"] == "torch-eager-train"]
    assert bar["per_round"] == pytest.approx([2.0, 2.0]) and bar["ratio"] == pytest.approx(2.0)
    assert bar["verdict"].startswith("pass")  # target 0.95


def test_selection_expands_bar_keys_and_refuses_unknown_names():
    engines_, workloads = bars.selection(["torch-eager-train", "kv-keras"])
    assert engines_ == ("torch-eager", "hf-eager", "keras-tensorflow") and workloads == ("train", "kv")
    engines_, workloads = bars.selection(["generate-best"])
    assert {"torch-eager", "keras-jax", "hf-eager", "kerashub-jax"} <= set(engines_) and workloads == ("generate",)
    assert bars.selection(None) == (bars.DEFAULT_ENGINES, bars.BAR_WORKLOADS)
    assert bars.selection(["nanogpt"]) == (("nanogpt",), bars.BAR_WORKLOADS)
    with pytest.raises(ValueError, match="unknown engine or bar 'torch-fast'"):
        bars.selection(["torch-fast"])


def test_reference_engines_run_in_the_same_stack_and_the_bar_is_a_view_of_the_run(tmp_path):
    """llmdual and the references in one run: each reference reproduces the expected outputs before it is timed
    (HF with its own generate, nanoGPT at its looser tolerance), keras-hub is skipped naming the extra."""
    (tmp_path / "nanogpt").mkdir()
    (tmp_path / "nanogpt" / "model.py").write_text(NANOGPT_LIKE)
    options = BenchSettings(preset="tiny", engines=("torch-eager", "hf-eager", "nanogpt", "kerashub-jax"),
                              workloads=("train", "infer", "generate"), batch_sizes=(2,), seq_lens=(8,),
                              prompt_len=4, new_tokens=3, warmup=0, repeats=2, threads=1, device="cpu",
                              nanogpt=str(tmp_path / "nanogpt"), charts=False, out=str(tmp_path / "out"))
    doc, _ = command.run(options, log=lambda line: None)
    status = {(c["engine"], c["workload"]): (c["status"], c["reason"]) for c in doc["cases"]}
    for case in ("torch-eager", "hf-eager"):
        for workload in ("train", "infer", "generate"):
            assert status[case, workload] == ("ok", None), (case, workload)
    assert status["nanogpt", "train"] == status["nanogpt", "infer"] == ("ok", None), status["nanogpt", "train"]
    assert status["nanogpt", "generate"][0] == "skipped"
    assert all("pip install 'llmdual[reference]'" in status["kerashub-jax", w][1] for w in ("train", "infer"))
    by_case = {(c["engine"], c["workload"]): c for c in doc["cases"]}
    assert by_case["hf-eager", "infer"]["scalars"]["max_abs_diff"] <= 1e-4
    assert by_case["nanogpt", "infer"]["scalars"]["tolerance"] == table.NANOGPT_TOLERANCE
    assert set(by_case["hf-eager", "generate"]["stats"]) >= {"tokens_per_s_b1", "tokens_per_s_batch"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf_bar.py"), "--results",
                           str(tmp_path / "out" / "results.json")], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    view = (tmp_path / "out" / "perf-bar.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in view.splitlines() if line.startswith("| ")}
    assert "hf-eager" in rows["torch-eager-train"] and "not measured" not in rows["torch-eager-train"]
    assert "torch-eager" in rows["generate-best"] and "x [" in rows["generate-best"]
    assert "not measured" in rows["keras-jax-train"] and "llmdual[reference]" in rows["keras-jax-train"]
