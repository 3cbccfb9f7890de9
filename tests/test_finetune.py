"""The adaptation experiment behind examples/finetune_lora.py, on tiny settings: two corpus parts, base / LoRA /
full fine-tune in each backend that takes adapters, from the same base, the merged model in int8, the chart."""

import numpy as np
import pytest

import llmdual
from llmdual.contract import backends
from llmdual.experiments.finetune import adapt, corpus_parts, int8_quality, plot_adaptation


def test_adapt_in_every_backend(tmp_path):
    tokenizer, base_data, target_data = corpus_parts(300, 32, "json", files=8)
    assert tokenizer.vocab_size <= 300 and len(target_data.train) > 0
    config = llmdual.Config.preset("tiny").replace(vocab_size=tokenizer.vocab_size, max_seq_len=32)
    base = llmdual.TrainConfig(steps=3, batch_size=2, warmup_steps=1, progress=False)
    tune = base.replace(eval_interval=2, eval_batches=1)
    lora = {"rank": 2, "alpha": 4.0, "targets": ("c_attn", "mlp.c_proj")}
    results = {b: adapt(config, b, base_data, target_data, base, tune, lora, 2, lora_lr=1e-2)
               for b in backends("lora")}
    d, L = config.d_model, config.n_layers
    adapters = L * 2 * ((d + 3 * d) + (config.d_ff + d))  # rank 2: A [in, 2] and B [2, out] per target and block
    for variants in results.values():
        assert [v.trainable for v in variants.values()] == [config.parameter_count(), adapters,
                                                             config.parameter_count()]
        assert variants["lora"].model.lora is None  # merged at the end
        assert all(np.isfinite(v.val_loss) and v.step_s > 0 for v in variants.values())
        assert variants["lora"].history.val_step == [1, 2]  # 0-based: every 2nd step and the last
    # the same seed, batches and recipe: the backends agree (fp32 summation order only)
    first, *others = results.values()
    for name in ("base", "lora", "full"):
        assert [r[name].val_loss for r in others] == pytest.approx([first[name].val_loss] * len(others), abs=1e-4)
    batches = [target_data.get_batch("val", 2, i) for i in range(2)]
    merged = results[next(b for b in backends("int8") if b in results)]["lora"].model
    quantized, q = int8_quality(merged, batches)
    assert quantized.quantized == "int8" and getattr(merged, "quantized", None) is None
    assert abs(q.perplexity_delta) < 0.01 and q.top1_agreement > 0.9
    path = plot_adaptation(results, tmp_path / "curves.png", "tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_package_is_named():
    with pytest.raises(ValueError, match="no standard-library package 'nosuchpkg'"):
        corpus_parts(300, 32, "nosuchpkg")
