"""With GPT-2's weights, logits equal Hugging Face's GPT2LMHeadModel in every backend."""

import numpy as np
import torch
import transformers

import llmdual


def test_logits_match_gpt2lmheadmodel(backend):
    config = transformers.GPT2Config(vocab_size=300, n_positions=48, n_embd=96, n_layer=3, n_head=3,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    ids = np.random.default_rng(0).integers(0, 300, (2, 40))
    with torch.no_grad():
        reference = hf(torch.from_numpy(ids)).logits.numpy()
    ours_config, weights = llmdual.from_hf_gpt2(hf.state_dict(), config.to_dict())
    model = llmdual.build(ours_config, backend, weights=weights)
    # fp32: different kernels for the same math agree to a few ulps of logits of magnitude ~1 (the float64
    # reference is closer still: the difference is HF's own fp32 rounding).
    np.testing.assert_allclose(llmdual.forward(model, ids), reference, atol=1e-5, rtol=0)
