"""Interop with Hugging Face: ``to_hf_gpt2`` inverts ``from_hf_gpt2`` and feeds ``GPT2LMHeadModel``; adapters
exported by ``save_lora_peft`` load with PEFT onto ``GPT2LMHeadModel`` (built from a config, no download) and give
llmdual's logits. Tolerance 1e-5: the same fp32 math through different kernels (as in test_hf_gpt2.py)."""

import json

import numpy as np
import pytest
import torch
import transformers

import llmdual
from llmdual.contract import backends

peft = pytest.importorskip("peft")


def hf_pair(backend: str, tie: bool = True):
    """A random GPT2LMHeadModel and the llmdual model of the given backend holding its weights."""
    config = transformers.GPT2Config(vocab_size=300, n_positions=48, n_embd=96, n_layer=2, n_head=3,
                                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=tie)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    ours_config, weights = llmdual.from_hf_gpt2(hf.state_dict(), config.to_dict())
    return hf, llmdual.build(ours_config, backend, weights=weights)


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


@pytest.mark.parametrize("tie", [True, False])
def test_to_hf_gpt2_inverts_from_hf_gpt2(tie):
    config = llmdual.Config.preset("tiny", tie_embeddings=tie)
    weights = llmdual.init_weights(config, seed=3)
    state, hf_config = llmdual.to_hf_gpt2(weights, config)
    assert "lm_head.weight" in state and "transformer.h.0.attn.c_attn.weight" in state
    back_config, back = llmdual.from_hf_gpt2(state, hf_config)
    assert back_config == config
    assert list(back) == list(weights) and all(np.array_equal(back[n], weights[n]) for n in weights)


def test_to_hf_gpt2_loads_into_gpt2lmheadmodel():
    config = llmdual.Config.preset("tiny", tie_embeddings=False)
    model = llmdual.build(config, "torch", seed=1)
    state, hf_config = llmdual.to_hf_gpt2(llmdual.get_weights(model), config)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config)).eval()
    hf.load_state_dict({n: torch.from_numpy(v) for n, v in state.items()}, strict=True)  # every key, no other
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (2, 20))
    np.testing.assert_allclose(hf_logits(hf, ids), llmdual.forward(model, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", backends("lora"))
def test_peft_loads_llmdual_adapters_onto_gpt2lmheadmodel(backend, tmp_path):
    hf, model = hf_pair(backend)
    llmdual.add_lora(model, rank=4, alpha=8.0, targets=("c_attn", "c_proj", "c_fc", "mlp.c_proj"), init_b="normal")
    ids = np.random.default_rng(0).integers(0, 300, (2, 40))
    folder = llmdual.save_lora_peft(model, tmp_path / "adapter")
    assert json.loads((folder / "adapter_config.json").read_text())["target_modules"] == [
        "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    base = hf_logits(hf, ids)
    adapted = peft.PeftModel.from_pretrained(hf, str(folder)).eval()
    reference = hf_logits(adapted, ids)
    assert np.abs(reference - base).max() > 1e-2  # the adapters were applied, not silently dropped
    np.testing.assert_allclose(llmdual.forward(model, ids), reference, atol=1e-5, rtol=0)


def test_peft_export_needs_an_lm_with_adapters(tiny, tmp_path):
    with pytest.raises(ValueError, match="cannot export LoRA adapters: the model has none"):
        llmdual.save_lora_peft(llmdual.build(tiny, "torch"), tmp_path)
    classifier = llmdual.build(tiny, "torch", task="classifier")
    llmdual.add_lora(classifier, rank=2)
    with pytest.raises(ValueError, match="PEFT export is for GPT2LMHeadModel: the model is a classifier"):
        llmdual.save_lora_peft(classifier, tmp_path)
