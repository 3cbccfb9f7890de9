"""Every backend: shapes, bad input errors, the registry's one-line refusals (unknown backend, missing framework,
missing capability), and the frameworks' own workflows (.keras, fit, torch.compile)."""

import importlib.util
import re

import numpy as np
import pytest
from conftest import framework_backends, logits_dtype, other_hosts

import llmdual
from llmdual import contract
from llmdual.contract import CAPABILITIES, BackendInfo, backends, info


def test_forward_shapes(tiny, backend, task, ids):
    model = llmdual.build(tiny, backend, task)
    logits = llmdual.forward(model, ids)
    expected = (2, 12, tiny.vocab_size) if task == "lm" else (2, tiny.num_classes)
    assert logits.shape == expected and logits.dtype == logits_dtype(backend)
    assert np.isfinite(logits).all()
    assert llmdual.backend_name(model) == backend and model.task == task


def test_untied_head_is_a_separate_weight(backend):
    config = llmdual.Config.preset("tiny", tie_embeddings=False)
    weights = llmdual.get_weights(llmdual.build(config, backend))
    assert not np.array_equal(weights["lm_head.weight"], weights["wte.weight"])


@pytest.mark.parametrize("bad, words", [(256, "token id 256 out of range"), (-1, "token id -1 out of range")])
def test_out_of_range_ids_raise(tiny, backend, task, ids, bad, words):
    ids = ids.copy()
    ids[1, 3] = bad
    with pytest.raises(ValueError) as err:
        llmdual.forward(llmdual.build(tiny, backend, task), ids)
    assert words in str(err.value) and "[0, 256)" in str(err.value)


def test_too_long_sequence_raises(tiny, backend, task):
    ids = np.zeros((1, tiny.max_seq_len + 1), np.int64)
    with pytest.raises(ValueError, match="sequence too long: 65 tokens > max_seq_len 64"):
        llmdual.forward(llmdual.build(tiny, backend, task), ids)


@pytest.mark.parametrize("backend", framework_backends())  # forward_cached: the framework models' own method
def test_cache_past_the_context_raises(tiny, backend):
    model = llmdual.build(tiny, backend)
    ids = np.zeros((1, 40), np.int64)
    if backend == "torch":
        import torch

        ids = torch.from_numpy(ids)
    _, past = model.forward_cached(ids)
    with pytest.raises(ValueError, match=r"sequence too long: 80 tokens \(40 cached \+ 40 new\)"):
        model.forward_cached(ids, past)


def test_unknown_backend_and_task(tiny):
    expected = f"unknown backend 'jaxx'; choose one of {', '.join(backends())}"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        llmdual.build(tiny, "jaxx")
    with pytest.raises(ValueError, match="unknown task 'regression'"):
        llmdual.build(tiny, "torch", "regression")
    with pytest.raises(TypeError, match="config must be an llmdual.Config"):
        llmdual.build({"d_model": 4}, "torch")
    with pytest.raises(ValueError, match=f"^unknown capability 'flying'; choose one of {', '.join(CAPABILITIES)}$"):
        backends("flying")


def hide(monkeypatch, package: str) -> None:
    """Make ``package`` look uninstalled to the registry's framework check."""
    real = importlib.util.find_spec
    monkeypatch.setattr(contract.importlib.util, "find_spec", lambda name: None if name == package else real(name))


@pytest.mark.parametrize("name", [b for b in backends() if info(b).needs])
def test_missing_framework_names_the_extra(tiny, monkeypatch, name):
    framework = info(name).needs[0]
    hide(monkeypatch, framework)
    expected = (f"backend '{name}' needs {framework}, which is not installed; install it with: "
                f"pip install 'llmdual[{info(name).extra}]'")
    with pytest.raises(ImportError, match=f"^{re.escape(expected)}$"):
        llmdual.build(tiny, name)


@pytest.mark.parametrize("name, library", [(b, library) for b in backends() for library in other_hosts(b)])
def test_a_missing_host_library_names_both_extras(tiny, monkeypatch, name, library):
    """Keras on JAX without jax installed: the hint installs Keras' extra and the host's together."""
    variable, _, extras = info(name).host
    monkeypatch.setenv(variable, library)
    hide(monkeypatch, library)
    with pytest.raises(ImportError, match=re.escape(f"needs {library}, which is not installed; install it with: "
                                                    f"pip install 'llmdual[{info(name).extra},{extras[library]}]'")):
        llmdual.build(tiny, name)


def test_a_capability_a_backend_lacks_is_refused_naming_those_that_have_it(monkeypatch):
    """Every gap in the registry (or, with none, a forward-only backend's) gets one line: what the backend does not
    do and which backends do it."""
    gaps = [(b, cap) for b in backends() for cap in CAPABILITIES if not info(b).offers(cap)]
    if not gaps:
        partial = BackendInfo("partial", (), "", "forward")
        monkeypatch.setitem(contract.REGISTRY, partial.name, partial)
        gaps = [(partial.name, cap) for cap in CAPABILITIES if cap != "forward"]
    for name, capability in gaps:
        able = backends(capability)
        assert name not in able, (name, capability)
        with pytest.raises(ValueError) as refused:
            contract.backend(name, capability)
        message = str(refused.value)
        assert message.startswith(f"backend '{name}' does not {CAPABILITIES[capability][1]}; backends that do: ")
        assert message.endswith(f"backends that do: {', '.join(able) or 'none'}") and "\n" not in message


def test_the_refusal_reads_as_a_sentence(monkeypatch):
    """The example of the message: a forward-only backend asked to train."""
    monkeypatch.setitem(contract.REGISTRY, "partial", BackendInfo("partial", (), "", "forward"))
    with pytest.raises(ValueError, match=f"^backend 'partial' does not train; backends that do: "
                                         f"{re.escape(', '.join(backends('training')))}$"):
        contract.check_backend("partial", "training")


def test_foreign_objects_are_refused(tiny):
    with pytest.raises(TypeError, match="expected an llmdual model.*builtins.dict"):
        llmdual.forward({}, np.zeros((1, 2), np.int64))


def test_keras_model_saves_as_dot_keras_and_fits(tiny, ids, tmp_path):
    import keras

    model = llmdual.build(tiny, "keras", "lm")
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    assert np.array_equal(llmdual.forward(restored, ids), llmdual.forward(model, ids))

    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ids, np.roll(ids, -1, axis=1), epochs=3, verbose=0).history["loss"]
    assert history[-1] < history[0]

    clf = llmdual.build(tiny, "keras", "classifier")
    clf.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    assert np.isfinite(clf.fit(x, np.array([0, 1]), epochs=1, verbose=0).history["loss"]).all()


def test_torch_model_compiles_without_graph_breaks(tiny, ids):
    import torch

    model = llmdual.build(tiny, "torch", "lm").eval()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: any graph break is an error
    with torch.no_grad():
        out = compiled(torch.from_numpy(ids)).numpy()
    # Inductor fuses and reorders fp32 reductions: a few ulps of logits of magnitude ~1.
    np.testing.assert_allclose(out, llmdual.forward(model, ids), atol=1e-5, rtol=0)
