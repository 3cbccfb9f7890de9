"""LoRA in every backend that takes adapters: canonical adapter names, the shared initializer, freezing, merging,
adapter files across backends, training the adapters alone (with resumable run states), bad input, and the ``lora``
parity group.

Tolerances: logits of the same fp32 math through different kernels agree to a few ulps of values ~1, so 1e-5
absolute (as every logits check); B = 0 adds an exact zero, so logits are then bit-identical to the base model's.
"""

import json
from itertools import combinations, permutations

import numpy as np
import pytest
from safetensors import safe_open

import llmdual
from llmdual import parity
from llmdual.contract import backends
from llmdual.core.lora_spec import init_lora, lora_spec, resolve_targets
from llmdual.core.weights import canonical_shapes
from llmdual.parity import ParityContext
from llmdual.parity import lora as lora_parity
from llmdual.parity import training as training_parity
from llmdual.training import run_state_prefix

ALL = ("c_attn", "c_proj", "c_fc", "mlp.c_proj")
ATOL = 1e-5


@pytest.fixture(params=backends("lora"))
def backend(request) -> str:
    return request.param


def lora_model(config, backend, init_b="normal", **changes):
    model = llmdual.build(config, backend, seed=0)
    llmdual.add_lora(model, **{"rank": 4, "alpha": 8.0, "targets": ALL, "init_b": init_b, **changes})
    return model


def test_adapters_have_canonical_names_and_start_identical(tiny, ids):
    base = {b: llmdual.forward(llmdual.build(tiny, b), ids) for b in backends("lora")}
    models = {b: lora_model(tiny, b, init_b="zeros") for b in backends("lora")}
    first, *others = (llmdual.get_weights(model) for model in models.values())
    C = tiny.d_model
    assert first["h.0.attn.c_attn.lora_A"].shape == (C, 4) and first["h.0.attn.c_attn.lora_B"].shape == (4, 3 * C)
    assert first["h.1.mlp.c_proj.lora_A"].shape == (tiny.d_ff, 4) and first["h.1.mlp.c_proj.lora_B"].shape == (4, C)
    assert list(first) == list(canonical_shapes(tiny, "lm", next(iter(models.values())).lora))
    for weights in others:  # one numpy initializer for every backend
        assert list(weights) == list(first) and all(np.array_equal(weights[n], first[n]) for n in first)
    assert not first["h.0.attn.c_attn.lora_B"].any() and first["h.0.attn.c_attn.lora_A"].std() > 0
    for b, model in models.items():  # B = 0: the adapted model starts exactly where the base model was
        np.testing.assert_array_equal(llmdual.forward(model, ids), base[b])


def test_only_adapters_are_trainable(tiny, backend):
    model = lora_model(tiny, backend)
    if backend == "torch":
        trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    else:
        trainable = sorted(v.path.split("/")[-1] for v in model.trainable_weights)
    assert len(trainable) == 2 * len(ALL) * tiny.n_layers
    assert all("lora" in n for n in trainable)


@pytest.mark.parametrize("a, b", combinations(backends("lora"), 2))
def test_backends_agree_with_nonzero_adapters(tiny, ids, a, b):
    np.testing.assert_allclose(llmdual.forward(lora_model(tiny, a), ids), llmdual.forward(lora_model(tiny, b), ids),
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("a, b", combinations(backends("lora"), 2))
def test_the_comparison_can_fail(tiny, ids, a, b):
    """Another alpha moves the logits far beyond the tolerance: the checks above can catch a wrong scale."""
    first, second = lora_model(tiny, a), lora_model(tiny, b, alpha=9.0)
    assert np.abs(llmdual.forward(first, ids) - llmdual.forward(second, ids)).max() > 100 * ATOL


def test_target_names():
    assert resolve_targets("c_proj") == ("attn.c_proj",)
    assert resolve_targets(["mlp.c_proj", "c_attn", "attn.c_attn"]) == ("attn.c_attn", "mlp.c_proj")
    assert resolve_targets(ALL) == ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    with pytest.raises(ValueError, match=r"unknown LoRA target\(s\) \['q_proj'\]; allowed: attn.c_attn"):
        resolve_targets(["c_attn", "q_proj"])
    with pytest.raises(ValueError, match="unknown LoRA target"):
        resolve_targets([])


def test_c_proj_means_the_attention_projection(tiny):
    model = lora_model(tiny, "torch", targets="c_proj")
    names = [n for n in llmdual.get_weights(model) if "lora" in n]
    assert names == [f"h.{i}.attn.c_proj.lora_{x}" for i in range(tiny.n_layers) for x in "AB"]


@pytest.mark.parametrize("changes, message", [
    ({"rank": 0}, r"rank must be an integer in 1 \.\. 64"),
    ({"rank": -2}, "rank must be an integer"),
    ({"rank": 65}, r"1 \.\. 64 \(the smallest side of"),
    ({"rank": 2.0}, "rank must be an integer"),
    ({"rank": True}, "rank must be an integer"),
    ({"alpha": 0.0}, "alpha must be a finite positive number"),
    ({"alpha": float("nan")}, "alpha must be a finite positive number"),
    ({"targets": ("c_attn", "lm_head")}, r"unknown LoRA target\(s\) \['lm_head'\]"),
    ({"init_b": "ones"}, r"unknown init_b 'ones'; choose one of \['zeros', 'normal'\]"),
])
def test_bad_arguments_are_refused(tiny, backend, changes, message):
    model = llmdual.build(tiny, backend)
    with pytest.raises(ValueError, match=message):
        llmdual.add_lora(model, **{"rank": 4, "targets": ALL, **changes})
    assert model.lora is None and "h.0.attn.c_attn.lora_A" not in llmdual.get_weights(model)


def test_rank_may_reach_the_smallest_side_of_its_targets(tiny):
    assert lora_spec(tiny, tiny.d_model, 1.0, "c_fc").rank == tiny.d_model  # c_fc is [64, 256]


def test_adding_twice_merging_or_saving_without_adapters_is_refused(tiny, backend, tmp_path):
    model = llmdual.build(tiny, backend)
    with pytest.raises(ValueError, match="cannot merge LoRA adapters: the model has none"):
        llmdual.merge_lora(model)
    with pytest.raises(ValueError, match="cannot save LoRA adapters: the model has none"):
        llmdual.save_lora(model, tmp_path / "a.safetensors")
    llmdual.add_lora(model, rank=2)
    with pytest.raises(ValueError, match=r"already has LoRA adapters \(rank 2, alpha 16"):
        llmdual.add_lora(model, rank=2)
    with pytest.raises(ValueError, match="merge_lora"):
        llmdual.save(model, tmp_path / "m.safetensors")


def test_merge_folds_adapters_into_the_weights(tiny, backend, ids):
    model = lora_model(tiny, backend)
    before, weights = llmdual.forward(model, ids), llmdual.get_weights(model)
    llmdual.merge_lora(model)
    merged = llmdual.get_weights(model)
    assert model.lora is None and list(merged) == list(canonical_shapes(tiny, "lm"))
    for name in ("h.0.attn.c_attn", "h.1.mlp.c_proj"):
        expected = weights[f"{name}.weight"] + np.float32(2.0) * (weights[f"{name}.lora_A"] @ weights[f"{name}.lora_B"])
        np.testing.assert_array_equal(merged[f"{name}.weight"], expected)
    np.testing.assert_allclose(llmdual.forward(model, ids), before, atol=ATOL, rtol=0)
    trainable = [p.requires_grad for p in model.parameters()] if backend == "torch" else \
        [v.trainable for v in model.weights]
    assert all(trainable) and len(trainable) == len(merged)
    llmdual.add_lora(model, rank=2)  # a merged model takes new adapters
    assert model.lora.rank == 2


def test_generation_follows_the_adapters(tiny, backend):
    """A decoder compiled before adapters are added or merged (Keras keeps its traced step on the model) must not
    go on generating with the old projections."""
    prompt, lora = np.array([[1, 2, 3, 4]]), {"alpha": 64.0, "targets": ("c_attn", "c_fc")}
    model = llmdual.build(tiny, backend)
    base = llmdual.generate(model, prompt, 6, stop_at_eot=False)[0]
    reference = llmdual.generate(lora_model(tiny, backend, **lora), prompt, 6, stop_at_eot=False)[0]
    assert not np.array_equal(base, reference)  # the adapters change the greedy tokens
    llmdual.add_lora(model, **{"rank": 4, "init_b": "normal", **lora})
    np.testing.assert_array_equal(llmdual.generate(model, prompt, 6, stop_at_eot=False)[0], reference)
    llmdual.merge_lora(model)
    np.testing.assert_array_equal(llmdual.generate(model, prompt, 6, stop_at_eot=False)[0], reference)


@pytest.mark.parametrize("src, dst", permutations(backends("lora"), 2))
def test_adapters_saved_in_one_backend_load_in_the_other(tiny, ids, tmp_path, src, dst):
    model = lora_model(tiny, src)
    path = llmdual.save_lora(model, tmp_path / "adapters.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        names, meta = list(f.keys()), f.metadata()
    assert all("lora" in n for n in names) and len(names) == 2 * len(ALL) * tiny.n_layers
    assert json.loads(meta["lora"]) == {"rank": 4, "alpha": 8.0,
                                        "targets": ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]}
    restored = llmdual.build(tiny, dst)  # no adapters yet: loading adds them
    llmdual.load_lora(restored, path)
    np.testing.assert_allclose(llmdual.forward(restored, ids), llmdual.forward(model, ids), atol=ATOL, rtol=0)
    same = lora_model(tiny, dst, init_b="zeros")  # same rank, alpha, targets: replaced
    llmdual.load_lora(same, path)
    np.testing.assert_allclose(llmdual.forward(same, ids), llmdual.forward(model, ids), atol=ATOL, rtol=0)


def test_foreign_adapters_are_refused(tiny, tmp_path):
    path = llmdual.save_lora(lora_model(tiny, "torch"), tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match=r"holds LoRA adapters of rank 4, .*; the model has rank 2"):
        llmdual.load_lora(lora_model(tiny, "keras", rank=2), path)
    with pytest.raises(ValueError, match="targets"):
        llmdual.load_lora(lora_model(tiny, "keras", targets="c_attn"), path)
    with pytest.raises(ValueError, match="holds adapters for a lm model of Config.*d_model=64.*not this lm model"):
        llmdual.load_lora(llmdual.build(tiny.replace(d_model=32), "torch"), path)
    with pytest.raises(ValueError, match="holds adapters for a lm model .* not this classifier model"):
        llmdual.load_lora(llmdual.build(tiny, "torch", task="classifier"), path)
    model_file = llmdual.save(llmdual.build(tiny, "torch"), tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="is not an llmdual LoRA adapter file"):
        llmdual.load_lora(llmdual.build(tiny, "torch"), model_file)


def test_training_updates_the_adapters_alone_and_resumes(tiny, backend, tmp_path):
    """Base weights stay bit-identical; the run state holds the base model, the adapters and their moments alone;
    resuming it, in either backend, reproduces the uninterrupted run (1e-6: two AdamW steps of lr <= 1e-3 from the
    same state, differing only by kernel rounding, ~1e-8)."""
    ctx = ParityContext(tiny, "lm", seed=0)
    cfg = training_parity.train_config(steps=4, checkpoint_dir=str(tmp_path), checkpoint_interval=2)
    model = lora_model(tiny, backend, init_b="zeros")
    start = llmdual.get_weights(model)
    llmdual.train(model, training_parity.batches(ctx, 4), cfg)
    end = llmdual.get_weights(model)
    adapters = [n for n in end if "lora" in n]
    assert all(np.array_equal(start[n], end[n]) for n in end if n not in adapters)
    assert all(not np.array_equal(start[n], end[n]) for n in adapters)
    prefix = run_state_prefix(tmp_path, 2)
    with safe_open(str(prefix.with_suffix(".optim.safetensors")), framework="numpy") as f:
        assert sorted(f.keys()) == sorted(f"{m}.{n}" for n in adapters for m in "mv")
    assert llmdual.load(prefix.with_suffix(".safetensors"), backend).lora is None  # the base model file
    for reader in backends("lora"):
        resumed = lora_model(tiny, reader, init_b="zeros")
        llmdual.train(resumed, training_parity.batches(ctx, 4), training_parity.train_config(steps=4), resume=prefix)
        got = llmdual.get_weights(resumed)
        for name in adapters:
            np.testing.assert_allclose(got[name], end[name], atol=1e-6, rtol=0, err_msg=f"{name} -> {reader}")
    with pytest.raises(ValueError, match="holds LoRA adapters, the model has none: add_lora first"):
        llmdual.train(llmdual.build(tiny, backend), training_parity.batches(ctx, 4),
                      training_parity.train_config(steps=4), resume=prefix)


def test_lora_parity_group_passes(tiny):
    """The `lora` group of ``python -m llmdual.parity``: forward, gradients, 20-step trajectory, merge, crossover."""
    assert parity.checks_for(["lora"]) == lora_parity.CHECKS
    report = parity.run(tiny, "lm", seed=0, checks=lora_parity.CHECKS)
    assert report.passed, report.table()
    names = " ".join(c.name for c in report.checks)
    lora = backends("lora")
    parts = ["lora: logits", "adapter gradients", "per-step loss (20 steps)"]
    parts += [f"{what} [{b}]" for b in lora for what in ("base weights frozen", "merged vs unmerged logits")]
    parts += [f"merged weights {a} vs {b}" for a, b in combinations(lora, 2)]
    parts += [f"save_lora {a} -> load_lora {b}" for a, b in permutations(lora, 2)]
    for part in parts:
        assert part in names, part


def test_init_is_seeded():
    config = llmdual.Config.preset("tiny")
    spec = lora_spec(config, 4, 8.0, ALL)
    a, b, c = init_lora(config, spec, 0, "normal"), init_lora(config, spec, 0, "normal"), init_lora(config, spec, 1)
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["h.0.attn.c_attn.lora_A"], c["h.0.attn.c_attn.lora_A"])
    bound = 1 / np.sqrt(config.d_model)
    assert np.abs(a["h.0.attn.c_attn.lora_A"]).max() <= bound
