"""``llmdual.forward`` on a Keras model runs compiled (as ``predict`` does) and returns what the eager call
returns: same logits at real positions for ragged lengths and masks, the eager input checks kept, one trace per
length bucket, the weights read at each call. The JAX backend is checked in a subprocess (Keras' backend is
fixed per process)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from keras import ops

import llmdual
from llmdual.backends.keras import api

TOL = 1e-5  # fp32: graph and eager sum in different orders (logits are O(1))


def eager(model, ids, mask=None):
    """The model called eagerly, as ``llmdual.forward`` ran before it was compiled."""
    out = model(ops.convert_to_tensor(ids), None if mask is None else ops.convert_to_tensor(mask), training=False)
    return np.asarray(ops.convert_to_numpy(out), np.float32)


def ragged_cases(config):
    """(ids, mask) at lengths that share a bucket and lengths that do not, with and without left padding."""
    rng = np.random.default_rng(1)
    cases = []
    for T in (3, 5, 12, 16, 17, config.max_seq_len):
        ids = rng.integers(0, config.vocab_size, (2, T))
        mask = np.ones((2, T), np.int64)
        mask[1, : T // 2] = 0  # row 1 left-padded
        cases += [(ids, None), (ids, mask)]
    return cases


@pytest.mark.parametrize("task", ["lm", "classifier"])
def test_compiled_forward_matches_eager_call(tiny, task):
    model = llmdual.build(tiny, "keras", task, seed=3)
    for ids, mask in ragged_cases(tiny):
        got = llmdual.forward(model, ids, mask)
        want = eager(model, ids, mask)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=f"T={ids.shape[1]}, mask={mask is not None}")


def test_compiled_forward_matches_torch(tiny, task):
    torch_model = llmdual.build(tiny, "torch", task, seed=4)
    keras_model = llmdual.build(tiny, "keras", task, seed=4)
    ids, mask = ragged_cases(tiny)[5]
    np.testing.assert_allclose(llmdual.forward(keras_model, ids, mask), llmdual.forward(torch_model, ids, mask),
                               rtol=0, atol=TOL)


def test_bad_input_is_refused_before_the_compiled_call(tiny):
    model = llmdual.build(tiny, "keras", seed=0)
    with pytest.raises(ValueError, match="out of range"):
        llmdual.forward(model, np.array([[1, tiny.vocab_size]]))
    with pytest.raises(ValueError, match="too long"):
        llmdual.forward(model, np.zeros((1, tiny.max_seq_len + 1), np.int64))
    with pytest.raises(ValueError, match="attention_mask"):
        llmdual.forward(model, np.zeros((1, 4), np.int64), np.zeros((1, 4), np.int64))


def test_length_buckets():
    assert [api._bucket(n, 64) for n in (1, 16, 17, 32, 33, 64)] == [16, 16, 32, 32, 64, 64]
    assert api._bucket(300, 256) == 256  # never past the context


def test_new_weights_are_used_without_recompiling(tiny):
    model = llmdual.build(tiny, "keras", seed=0)
    ids = np.arange(10)[None] % tiny.vocab_size
    first = llmdual.forward(model, ids)
    llmdual.set_weights(model, llmdual.get_weights(llmdual.build(tiny, "keras", seed=1)))
    second = llmdual.forward(model, ids)
    assert np.abs(first - second).max() > 1e-3  # the compiled forward reads the variables, not a snapshot
    np.testing.assert_allclose(second, eager(model, ids), rtol=0, atol=TOL)
    assert len(model._compiled_forward) == 1  # set_weights assigns the same variables: one compiled forward


JAX_SCRIPT = """
import json, sys
import numpy as np
import jax, keras
import llmdual
from llmdual.core.config import Config
from keras import ops

config = Config.preset("tiny")
out = {"backend": keras.backend.backend(), "diffs": [], "compiles": None}
for task in ("lm", "classifier"):
    model = llmdual.build(config, "keras", task, seed=3)
    torch_model = llmdual.build(config, "torch", task, seed=3)
    rng = np.random.default_rng(1)
    for T in (3, 5, 12, 16, 17, 64):
        ids = rng.integers(0, config.vocab_size, (2, T))
        mask = np.ones((2, T), np.int64)
        mask[1, : T // 2] = 0
        for m in (None, mask):
            eager = np.asarray(ops.convert_to_numpy(model(ids, m, training=False)))
            got = llmdual.forward(model, ids, m)
            out["diffs"].append(float(np.abs(got - eager).max()) if got.shape == eager.shape else 1e9)
            out["diffs"].append(float(np.abs(got - llmdual.forward(torch_model, ids, m)).max()))
model = llmdual.build(config, "keras", seed=0)
traces = []
call = model.call
model.call = lambda *a, **k: (traces.append(1), call(*a, **k))[1]
for T in (3, 7, 11, 16):  # one bucket: one trace
    llmdual.forward(model, np.ones((2, T), np.int64))
out["compiles"] = len(traces)

# the decoder reads the weights once per generation: the next generation after set_weights uses the new ones
from llmdual.contract import backend
from llmdual.core.weights import init_weights
scaled = lambda seed: {k: v * 8 if v.ndim == 2 else v for k, v in init_weights(config, "lm", seed).items()}
gen = lambda m: np.stack(llmdual.generate(m, [[1, 2, 3]], 8, stop_at_eot=False)).tolist()
model = llmdual.build(config, "keras", weights=scaled(0))
decoder = backend("keras").decoder(model)
out["tokens"] = [gen(decoder)]
llmdual.set_weights(model, scaled(7))
out["tokens"] += [gen(decoder), gen(llmdual.build(config, "torch", weights=scaled(7)))]
json.dump(out, sys.stdout)
"""


def test_jax_compiled_forward_matches_eager_and_torch():
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", JAX_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax"
    assert len(result["diffs"]) == 2 * 6 * 2 * 2 and max(result["diffs"]) < TOL, result["diffs"]
    assert result["compiles"] == 1  # lengths 3..16 share the 16-token bucket
    before, after, fresh = result["tokens"]
    assert after == fresh and before != after  # the JAX decoder generated with the weights set in between
