"""Parity between the backends over presets and random small configs, and the divergence diagnosis."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmdual import parity
from llmdual.parity import core
from llmdual.parity import model as model_checks
from llmdual.parity.__main__ import main
from llmdual.core.config import Config


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_presets_pass_every_model_check(preset, task):
    """Training and generation parity runs on `tiny` in test_training.py (20 steps per backend per check)."""
    report = parity.run(Config.preset(preset), task, seed=0, checks=model_checks.CHECKS)
    assert report.passed, report.table()
    names = {c.name for c in report.checks}
    assert {"weights identical (same seed)", "logits", "loss", "save torch -> load keras"} <= names
    assert report.divergence is None


@st.composite
def small_configs(draw):
    n_heads = draw(st.integers(1, 4))
    return Config(
        vocab_size=draw(st.integers(5, 300)),
        max_seq_len=draw(st.integers(4, 40)),
        d_model=n_heads * draw(st.integers(1, 12)) * 2,
        n_layers=draw(st.integers(1, 3)),
        n_heads=n_heads,
        d_ff=draw(st.integers(1, 96)),
        norm_eps=draw(st.sampled_from([1e-5, 1e-6, 1e-3])),
        tie_embeddings=draw(st.booleans()),
        num_classes=draw(st.integers(1, 5)),
    )


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=small_configs(), task=st.sampled_from(["lm", "classifier"]), seed=st.integers(0, 2**16))
def test_random_small_configs_agree(config, task, seed):
    checks = [model_checks.check_weights_identical, model_checks.check_forward, model_checks.check_loss_and_grads, model_checks.check_invariance]
    report = parity.run(config, task, seed, checks=checks)
    assert report.passed, report.table()


def test_a_mismatched_gelu_is_caught_and_localised(tiny, monkeypatch):
    """Exact GELU in the Keras MLP (a classic porting slip) must fail the logits check and be pinned to block 0's MLP."""
    from keras import ops

    from llmdual.keras_backend import model as keras_model

    monkeypatch.setattr(keras_model.MLP, "call",
                        lambda self, x, training=None: self.c_proj(ops.gelu(self.c_fc(x), approximate=False)))
    # Scale the weights up so the GELU variants differ far beyond the tolerance.
    ctx = parity.ParityContext(tiny, "lm", seed=0)
    from llmdual.api import get_weights, set_weights

    for model in ctx.models.values():
        set_weights(model, {n: v * 8 if v.ndim == 2 else v for n, v in get_weights(model).items()})
    report = parity.ParityReport(tiny, "lm", 0, model_checks.check_forward(ctx))
    assert not report.passed
    divergence = core.first_divergence(ctx)
    assert divergence is not None and divergence.startswith("block 0 MLP output"), divergence


def test_a_mismatched_mask_constant_is_caught(tiny, monkeypatch):
    """A mask that lets queries see the future in one backend fails the logits check at block 0's attention."""
    from llmdual.keras_backend import model as keras_model

    original = keras_model.attention_bias
    monkeypatch.setattr(keras_model, "attention_bias", lambda m, T, p, causal: original(m, T, p, False))
    ctx = parity.ParityContext(tiny, "lm", seed=0)
    assert not all(c.passed for c in model_checks.check_forward(ctx))
    assert core.first_divergence(ctx).startswith("block 0 attention output")


def test_report_table_and_dict(tiny):
    report = parity.run(tiny, "classifier", checks=[model_checks.check_forward])
    table, data = report.table(), report.to_dict()
    assert "logits, padded mask" in table and "PASSED: 2/2 checks" in table
    assert data["passed"] is True and len(data["checks"]) == 2
    assert np.isfinite([c["max_abs"] for c in data["checks"]]).all()


def test_cli_prints_the_tables_and_exits_zero(capsys, tmp_path):
    assert main(["--preset", "tiny", "--task", "lm", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "gradients (worst tensor, rel to its max)" in out and "PASSED" in out
    assert (tmp_path / "r.json").read_text().startswith("[")
