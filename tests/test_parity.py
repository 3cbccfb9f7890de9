"""Parity between every pair of backends and of each against the float64 reference, over presets and random small
configs, and the divergence diagnosis. Every backend list comes from the registry (``llmdual.parity.core.pairs``,
``peers``, ``references``)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmdual import contract, parity
from llmdual.core.config import Config
from llmdual.parity import core
from llmdual.parity import model as model_checks
from llmdual.parity.__main__ import main
from llmdual.parity.core import label, pairs, peers, references

TASKS = ("lm", "classifier")


@pytest.fixture(scope="module", params=TASKS)
def tiny_report(request) -> parity.ParityReport:
    """Every model check on the tiny preset, once per task for the module."""
    return parity.run(Config.preset("tiny"), request.param, seed=0, checks=model_checks.CHECKS)


def rows(report: parity.ParityReport) -> dict[str, core.Check]:
    return {c.name: c for c in report.checks}


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_presets_pass_every_model_check(preset, task):
    """Training and generation parity runs on `tiny` in test_training.py (20 steps per backend per check)."""
    report = parity.run(Config.preset(preset), task, seed=0, checks=model_checks.CHECKS)
    assert report.passed, report.table()
    assert report.divergence == [] and report.reference_divergence == []


@pytest.mark.parametrize("a,b", pairs("forward"))
def test_every_pair_of_backends_is_compared(tiny_report, a, b):
    found = rows(tiny_report)
    for name in (f"weights identical {a} vs {b} (same seed)", f"logits {a} vs {b}", f"logits {a} vs {b}, padded mask",
                 f"save {a} -> load {b}", f"save {b} -> load {a}"):
        assert name in found and found[name].passed and not found[name].reference, (name, tiny_report.table())


@pytest.mark.parametrize("a,b", pairs("gradients"))
def test_every_pair_with_gradients_compares_loss_and_gradients(tiny_report, a, b):
    found = rows(tiny_report)
    for name in (f"loss {a} vs {b}", f"gradients {a} vs {b} (worst tensor, rel to its max)"):
        assert name in found and found[name].passed, (name, tiny_report.table())


def test_the_reference_is_compared_in_its_own_group_only(tiny_report):
    """No row pairs two backends one of which is the reference, and no row names a backend that is not registered."""
    for check in tiny_report.checks:
        if " vs " in check.name and not check.reference:
            assert not any(f" {r}" in check.name for r in references()), check.name
    assert all(not c.reference for c in tiny_report.checks if "fp64" not in c.name)


@pytest.mark.parametrize("name", peers("forward"))
def test_every_backend_is_held_against_the_float64_reference(tiny_report, name):
    """Logits of each backend against every reference (none registered fails: the rows are what this tests), at
    the same 1e-5 as between two backends."""
    assert references(), "no backend offers 'reference': no float64 rows to check"
    found = rows(tiny_report)
    for reference in references():
        for row in (f"logits {name} vs {label(reference)}", f"logits {name} vs {label(reference)}, padded mask"):
            assert row in found, (row, tiny_report.table())
            check = found[row]
            assert check.reference and check.passed and check.tolerance == 1e-5, (row, tiny_report.table())
    data = tiny_report.to_dict()
    assert data["reference"]["backends"] == references()
    assert f"logits {name} vs {label(references()[0])}" in {c["name"] for c in data["reference"]["checks"]}
    assert all(not c["reference"] for c in data["checks"])
    table = tiny_report.table()
    assert f"-- {core.REFERENCE_GROUP} (" in table
    assert table.index(core.REFERENCE_GROUP) < table.index(f"logits {name} vs {label(references()[0])}")


def test_without_a_reference_the_table_says_so_in_one_line(tiny, monkeypatch):
    """Before a backend offers ``reference``, parity runs with no float64 rows and one note line."""
    registry = {n: i for n, i in contract.REGISTRY.items() if not i.offers("reference")}
    monkeypatch.setattr(contract, "REGISTRY", registry)
    report = parity.run(tiny, "classifier", checks=[model_checks.check_forward])
    assert report.passed and not any(c.reference for c in report.checks)
    notes = [line for line in report.table().splitlines() if core.REFERENCE_GROUP in line]
    assert notes == [f"-- {core.REFERENCE_GROUP}: none checked, no backend offers 'reference' --"]
    assert report.to_dict()["reference"]["checks"] == []


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
    checks = [model_checks.check_weights_identical, model_checks.check_forward, model_checks.check_loss_and_grads,
              model_checks.check_invariance]
    report = parity.run(config, task, seed, checks=checks)
    assert report.passed, report.table()


def stage_of(line: str) -> int:
    """The index of the stage a divergence line names ("torch vs keras: block 0 MLP output (...)")."""
    stage = line.split(": ", 1)[1].split(" (")[0]
    return core.stage_names(Config.preset("tiny")).index(stage)


def test_a_mismatched_gelu_is_caught_and_localised(tiny, monkeypatch):
    """Exact GELU in the Keras MLP (a classic porting slip) must fail the logits checks that involve Keras and be
    pinned to block 0's MLP in every pair with Keras and in Keras against the reference; the backends without
    the slip do not diverge there."""
    from keras import ops

    from llmdual.api import get_weights, set_weights
    from llmdual.backends.keras import model as keras_model

    monkeypatch.setattr(keras_model.MLP, "call",
                        lambda self, x, training=None: self.c_proj(ops.gelu(self.c_fc(x), approximate=False)))
    ctx = parity.ParityContext(tiny, "lm", seed=0)
    # Scale the weights up so the GELU variants differ far beyond the tolerance.
    for model in ctx.models.values():
        set_weights(model, {n: v * 8 if v.ndim == 2 else v for n, v in get_weights(model).items()})
    report = parity.ParityReport(tiny, "lm", 0, model_checks.check_forward(ctx))
    assert not report.passed
    parity.localise(ctx, report)
    mlp = core.stage_names(tiny).index("block 0 MLP output")
    others = [b for b in ctx.models if b != "keras"]
    for name in others:
        divergence = core.first_divergence(ctx, name, "keras")
        assert divergence is not None and divergence.startswith(f"{label(name)} vs keras: block 0 MLP output"), \
            divergence
    for line in report.divergence + report.reference_divergence:
        assert ("keras" in line and stage_of(line) == mlp) or ("keras" not in line and stage_of(line) > mlp), line
    assert len([line for line in report.divergence if "keras" in line]) == len(peers("forward")) - 1
    assert len([line for line in report.reference_divergence if line.startswith("keras vs ")]) == len(references())


def test_a_mismatched_mask_constant_is_caught(tiny, monkeypatch):
    """A mask that lets queries see the future in Keras fails the logits checks involving Keras at block 0's
    attention, and nowhere else."""
    from llmdual.backends.keras import model as keras_model

    original = keras_model.attention_bias
    monkeypatch.setattr(keras_model, "attention_bias", lambda m, T, p, causal: original(m, T, p, False))
    ctx = parity.ParityContext(tiny, "lm", seed=0)
    checks = model_checks.check_forward(ctx)
    assert all(c.passed == ("keras" not in c.name) for c in checks), [(c.name, c.passed) for c in checks]
    for name in [b for b in ctx.models if b != "keras"]:
        assert core.first_divergence(ctx, name, "keras").startswith(f"{label(name)} vs keras: block 0 attention output")
        assert all(core.first_divergence(ctx, name, b) is None for b in ctx.models if b not in (name, "keras"))


def test_report_table_and_dict(tiny):
    report = parity.run(tiny, "classifier", checks=[model_checks.check_forward])
    table, data = report.table(), report.to_dict()
    between, against = 2 * len(pairs("forward")), 2 * len(peers("forward")) * len(references())
    assert all(f"logits {a} vs {b}, padded mask" in table for a, b in pairs("forward"))
    assert f"PASSED: {between + against}/{between + against} checks" in table
    assert data["passed"] is True and len(data["checks"]) == between
    assert len(data["reference"]["checks"]) == against
    assert np.isfinite([c["max_abs"] for c in data["checks"] + data["reference"]["checks"]]).all()


def test_cli_prints_the_tables_and_exits_zero(capsys, tmp_path):
    assert main(["--preset", "tiny", "--task", "lm", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert all(f"gradients {a} vs {b} (worst tensor, rel to its max)" in out for a, b in pairs("gradients"))
    assert "PASSED" in out
    assert (tmp_path / "r.json").read_text().startswith("[")
