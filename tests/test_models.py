"""Both backends: shapes, bad input errors, and the frameworks' own workflows (.keras, fit, torch.compile)."""

import importlib.util

import numpy as np
import pytest

import llmdual
from llmdual import contract


def test_forward_shapes(tiny, backend, task, ids):
    model = llmdual.build(tiny, backend, task)
    logits = llmdual.forward(model, ids)
    expected = (2, 12, tiny.vocab_size) if task == "lm" else (2, tiny.num_classes)
    assert logits.shape == expected and logits.dtype == np.float32
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
    with pytest.raises(ValueError, match="unknown backend 'jaxx'; choose one of \\['keras', 'torch'\\]"):
        llmdual.build(tiny, "jaxx")
    with pytest.raises(ValueError, match="unknown task 'regression'"):
        llmdual.build(tiny, "torch", "regression")
    with pytest.raises(TypeError, match="config must be an llmdual.Config"):
        llmdual.build({"d_model": 4}, "torch")


def test_missing_framework_names_the_extra(tiny, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(contract.importlib.util, "find_spec", lambda name: None if name == "torch" else real(name))
    with pytest.raises(ImportError, match=r"pip install 'llmdual\[torch\]'"):
        llmdual.build(tiny, "torch")


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
