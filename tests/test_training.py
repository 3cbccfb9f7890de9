"""Training in every backend that trains: config validation, the schedule, parity of trajectories, accumulation,
resume, run state and mixed precision."""

import importlib
import json

import numpy as np
import pytest

import llmdual
from llmdual import parity
from llmdual.bench.env import gpus
from llmdual.contract import backends, info
from llmdual.core.recipe import TrainConfig, lr_at
from llmdual.parity import ParityContext
from llmdual.parity import training as training_parity
from llmdual.training import latest_run_state


@pytest.fixture(params=backends("training"))
def backend(request) -> str:
    return request.param


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"lr": -1.0}, "lr must be a number >= 0"),
        ({"beta2": 1.0}, "beta2 must be in [0, 1)"),
        ({"batch_size": 6, "grad_accum": 4}, "divisible by grad_accum"),
        ({"min_lr": 1.0}, "must not exceed lr"),
        ({"precision": "fp8"}, "precision must be one of"),
    ],
)
def test_bad_train_config_names_the_field(changes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        TrainConfig(**changes)


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    cfg = TrainConfig(steps=50, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    rates = np.array([lr_at(s, cfg) for s in range(cfg.steps)])
    np.testing.assert_allclose(rates[:10], 1e-3 * np.arange(1, 11) / 11, rtol=1e-12)
    assert rates[10] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-4)
    assert np.all(np.diff(rates[10:]) <= 0)


def test_keras_schedule_is_the_shared_formula():
    from llmdual.backends.keras.train import LearningRate

    cfg = TrainConfig(steps=30, lr=2e-3, min_lr=2e-4, warmup_steps=7)
    keras_rates = [float(LearningRate(cfg)(s)) for s in range(cfg.steps)]
    np.testing.assert_allclose(keras_rates, [lr_at(s, cfg) for s in range(cfg.steps)], rtol=1e-6)


def test_training_parity_checks_pass(tiny, task):
    """Trajectories (20 steps), accumulation, resume across backends and greedy generation all agree."""
    report = parity.run(tiny, task, seed=1, checks=training_parity.CHECKS)
    assert report.passed, report.table()
    names = " ".join(c.name for c in report.checks)
    assert "per-step loss (20 steps)" in names and "keras run state -> torch" in names


def test_a_mismatched_adam_epsilon_is_caught(tiny, monkeypatch):
    """Keras' AdamW with eps 1e-6 instead of 1e-8 (an easy porting slip) must fail the trajectory check."""
    keras_train = importlib.import_module("llmdual.backends.keras.train")  # the package's ``train`` is the function
    original = keras_train.make_optimizer
    monkeypatch.setattr(keras_train, "make_optimizer", lambda model, cfg: original(model, cfg.replace(eps=1e-6)))
    checks = {c.name.split(": ")[-1]: c for c in training_parity.check_trajectory(ParityContext(tiny, "lm", seed=0))}
    summary = [(name, c.max_rel, c.passed) for name, c in checks.items()]
    assert checks["learning-rate schedule"].passed, summary  # the schedule is not what differs
    assert not checks["final weights (worst tensor)"].passed, summary


def test_the_trainer_step_matches_train(tiny, backend):
    """``Trainer.step`` (the benchmarks' unit of work) is the same step ``train`` takes."""
    ctx = ParityContext(tiny, "lm", seed=0)
    cfg = training_parity.train_config(steps=3)
    get_batch = training_parity.batches(ctx, cfg.batch_size)
    history, _ = training_parity.run(ctx, backend, cfg)
    module = importlib.import_module(f"{info(backend).package}.train")
    trainer = module.Trainer(llmdual.build(tiny, backend, seed=0), cfg)
    losses = [trainer.step(get_batch(step))[0] for step in range(cfg.steps)]
    np.testing.assert_allclose(losses, history.loss, rtol=1e-6)


def test_training_learns_and_records_history(tiny, backend):
    ctx = ParityContext(tiny, "lm", seed=0)
    history, _ = training_parity.run(ctx, backend, training_parity.train_config(steps=30, lr=3e-3))
    assert history.backend == backend
    assert len(history.loss) == len(history.lr) == len(history.grad_norm) == len(history.tokens_per_s) == 30
    assert min(history.tokens_per_s) > 0
    # the batches follow a learnable pattern: 30 steps take the loss well below its start (~log(vocab) nats)
    assert np.mean(history.loss[-5:]) < np.mean(history.loss[:5]) - 0.5


def test_run_state_holds_weights_moments_and_history(tiny, backend, tmp_path):
    ctx = ParityContext(tiny, "lm", seed=0)
    cfg = training_parity.train_config(steps=4, checkpoint_dir=str(tmp_path), checkpoint_interval=2)
    training_parity.run(ctx, backend, cfg)
    prefix = latest_run_state(tmp_path)
    assert prefix is not None and prefix.name == "step-000004"
    state = json.loads(prefix.with_suffix(".json").read_text())
    assert state["step"] == 4 and len(state["history"]["loss"]) == 4
    assert llmdual.load(prefix.with_suffix(".safetensors"), backend=backend).task == "lm"
    assert (tmp_path / "step-000002.optim.safetensors").is_file()
    assert not list(tmp_path.glob("*.tmp"))


def test_resuming_another_model_is_refused(tiny, tmp_path):
    ctx = ParityContext(tiny, "lm", seed=0)
    training_parity.run(ctx, "torch", training_parity.train_config(steps=2, checkpoint_dir=str(tmp_path)))
    other = llmdual.build(tiny.replace(d_model=32), "torch")
    with pytest.raises(ValueError, match="run state .* holds a lm model"):
        llmdual.train(other, training_parity.batches(ctx, 4), training_parity.train_config(steps=4), resume=tmp_path)
    with pytest.raises(FileNotFoundError, match="no run state"):
        llmdual.train(other, training_parity.batches(ctx, 4), training_parity.train_config(), resume=tmp_path / "x")


def test_bad_batches_are_refused(tiny, backend):
    model = llmdual.build(tiny, backend)
    with pytest.raises(ValueError, match="batch has 2 rows, but TrainConfig.batch_size is 4"):
        llmdual.train(model, lambda step: (np.zeros((2, 8)), np.zeros((2, 8))), training_parity.train_config())
    with pytest.raises(TypeError, match="data must be"):
        llmdual.train(model, 42, training_parity.train_config())


def test_bf16_mixed_precision_trains(tiny, backend):
    """bf16 autocast (PyTorch) / mixed_bfloat16 policy (Keras) runs on CPU and tracks the fp32 run loosely."""
    ctx = ParityContext(tiny, "lm", seed=0)
    fp32, _ = training_parity.run(ctx, backend, training_parity.train_config(steps=4))
    bf16, weights = training_parity.run(ctx, backend, training_parity.train_config(steps=4, precision="bf16"))
    assert all(w.dtype == np.float32 for w in weights.values())  # master weights stay fp32
    # bf16 keeps 8 bits of mantissa (~0.4% per rounding): a few percent over a short run is its noise floor.
    np.testing.assert_allclose(bf16.loss, fp32.loss, rtol=3e-2)


def test_fp16_without_a_gpu_is_refused_clearly(tiny, backend):
    from llmdual.bench.env import gpus

    if gpus():
        pytest.skip("a GPU is present: fp16 is allowed here")
    with pytest.raises(ValueError, match="precision 'fp16' needs a"):
        llmdual.train(llmdual.build(tiny, backend), training_parity.batches(ParityContext(tiny, "lm"), 4),
                      training_parity.train_config(steps=1, precision="fp16"))


@pytest.mark.skipif(not __import__("llmdual.bench.env").bench.env.gpus(), reason="needs a CUDA GPU (CI has none)")
def test_fp16_trains_on_a_gpu(tiny):
    import torch

    model = llmdual.build(tiny, "torch").to("cuda")
    history = llmdual.train(model, training_parity.batches(ParityContext(tiny, "lm"), 4),
                            training_parity.train_config(steps=4, precision="fp16"))
    assert torch.cuda.is_available() and all(np.isfinite(history.loss))


def test_trainers_started_mid_schedule_agree(tiny):
    """``Trainer(model, cfg, start=5)`` means the same in every backend: schedule and bias correction from step 5."""
    ctx = ParityContext(tiny, "lm", seed=0)
    cfg = training_parity.train_config(steps=10)
    batch = training_parity.batches(ctx, cfg.batch_size)(0)
    first = backends("training")[0]
    after = {}
    for backend, start in [(b, 5) for b in backends("training")] + [(first, 0)]:
        model = llmdual.build(tiny, backend, seed=0)
        llmdual.contract.backend(backend).trainer(model, cfg, start=start).step(batch)
        after[backend, start] = llmdual.get_weights(model)
    atol = training_parity.WEIGHT_TRAVEL_FRACTION * float(lr_at(5, cfg))  # the parity checks' bound for one step
    for other in backends("training")[1:]:
        for name, value in after[first, 5].items():
            np.testing.assert_allclose(after[other, 5][name], value, atol=atol, rtol=0, err_msg=f"{other} {name}")
    assert not np.allclose(after[first, 0]["h.0.attn.c_attn.weight"], after[first, 5]["h.0.attn.c_attn.weight"],
                           atol=10 * atol, rtol=0)


def test_precision_context_means_the_same_on_both_sides(tiny, backend, ids):
    """``precision_context(precision, model)`` runs the forward pass in bf16 inside, in fp32 again after."""
    module = importlib.import_module(f"{info(backend).package}.train")
    model = llmdual.build(tiny, backend, seed=0)
    fp32 = llmdual.forward(model, ids)
    with module.precision_context("bf16", model):
        bf16 = llmdual.forward(model, ids)
    assert 1e-4 < np.abs(bf16 - fp32).max() < 0.1  # bf16 rounding: visible, small
    np.testing.assert_array_equal(llmdual.forward(model, ids), fp32)
    if not gpus():  # fp16 is refused when the Trainer is made, before any step
        with pytest.raises(ValueError, match="precision 'fp16' needs a"):
            module.Trainer(model, training_parity.train_config(precision="fp16"))
