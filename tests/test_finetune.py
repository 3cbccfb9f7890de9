"""The adaptation experiment behind examples/finetune_lora.py, on tiny settings: two corpus parts, base / LoRA /
full fine-tune in each backend from the same base, the merged model in int8, the chart."""

import numpy as np
import pytest

import llmdual
from llmdual.experiments.finetune import adapt, corpus_parts, int8_quality, plot_adaptation


def test_adapt_in_both_backends(tmp_path):
    tokenizer, base_data, target_data = corpus_parts(300, 32, "json", files=8)
    assert tokenizer.vocab_size <= 300 and len(target_data.train) > 0
    config = llmdual.Config.preset("tiny").replace(vocab_size=tokenizer.vocab_size, max_seq_len=32)
    base = llmdual.TrainConfig(steps=3, batch_size=2, warmup_steps=1, progress=False)
    tune = base.replace(eval_interval=2, eval_batches=1)
    lora = {"rank": 2, "alpha": 4.0, "targets": ("c_attn", "mlp.c_proj")}
    results = {b: adapt(config, b, base_data, target_data, base, tune, lora, 2, lora_lr=1e-2)
               for b in ("torch", "keras")}
    d, L = config.d_model, config.n_layers
    adapters = L * 2 * ((d + 3 * d) + (config.d_ff + d))  # rank 2: A [in, 2] and B [2, out] per target and block
    for variants in results.values():
        assert [v.trainable for v in variants.values()] == [config.parameter_count(), adapters,
                                                             config.parameter_count()]
        assert variants["lora"].model.lora is None  # merged at the end
        assert all(np.isfinite(v.val_loss) and v.step_s > 0 for v in variants.values())
        assert variants["lora"].history.val_step == [1, 2]  # 0-based: every 2nd step and the last
    # the same seed, batches and recipe: the backends agree (fp32 summation order only)
    for name in ("base", "lora", "full"):
        assert results["torch"][name].val_loss == pytest.approx(results["keras"][name].val_loss, abs=1e-4)
    batches = [target_data.get_batch("val", 2, i) for i in range(2)]
    quantized, q = int8_quality(results["torch"]["lora"].model, batches)
    assert quantized.quantized == "int8" and getattr(results["torch"]["lora"].model, "quantized", None) is None
    assert abs(q.perplexity_delta) < 0.01 and q.top1_agreement > 0.9
    path = plot_adaptation(results, tmp_path / "curves.png", "tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_package_is_named():
    with pytest.raises(ValueError, match="no standard-library package 'nosuchpkg'"):
        corpus_parts(300, 32, "nosuchpkg")
