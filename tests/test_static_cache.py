"""The static KV cache and the compiled decoding steps, in every engine: greedy and seeded sampling give the
tokens of the same model's full forward passes sampled by the shared numpy sampler, exactly, and every backend
the same tokens; static-cache logits match the full forward passes' within 1e-5; left-padded ragged batches;
Keras' other backends (JAX, torch) in subprocesses."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import framework_backends, other_hosts

import llmdual
from llmdual.contract import backend as backend_package
from llmdual.contract import backends
from llmdual.core.decoding import cache_length, sample_steps
from llmdual.core.sampling import sample_next
from llmdual.generate import left_pad

ATOL = 1e-5  # float32 logits: the static cache attends over more (masked) slots, a different summation order
PROMPTS = [[7, 8, 9, 10, 11, 12], [40], [3, 2, 1]]
SAMPLING = {"temperature": 0.9, "top_k": 50, "top_p": 0.95, "seed": 11}
# (backend, compile): the engines this process runs; every backend that decodes runs its plain step, and the
# frameworks their compiled one too (torch.compile; Keras is on TensorFlow here: graph, and XLA with compile)
ENGINES = [(b, compile) for b in backends("decoding") for compile in (False, True)
           if not compile or b in framework_backends()]


def engine_id(engine: tuple[str, bool]) -> str:
    return f"{engine[0]}-{'compiled' if engine[1] else 'plain'}"


@pytest.fixture(scope="module")
def models():
    config = llmdual.Config.preset("tiny")
    return {b: llmdual.build(config, b, seed=3) for b in backends("decoding")}


def reference(model, prompts: list[list[int]], n: int, temperature: float = 0.0, top_k=None, top_p=None,
              seed: int = 0) -> np.ndarray:
    """Tokens [B, n] by full forward passes over each row alone (no padding, no cache), the batch's last logits
    sampled together by ``sample_next``: the definition every decoder must meet."""
    rows, rng = [list(p) for p in prompts], np.random.default_rng(seed)
    for _ in range(n):
        logits = np.concatenate([llmdual.forward(model, np.array([row]))[:, -1] for row in rows])
        for row, token in zip(rows, sample_next(logits, temperature, top_k, top_p, rng)):
            row.append(int(token))
    return np.array([row[-n:] for row in rows])


def generated(model, engine: tuple[str, bool], prompts, n: int, **kwargs) -> np.ndarray:
    decoder = backend_package(engine[0]).decoder(model, True, engine[1])
    return np.stack(llmdual.generate(decoder, prompts, n, stop_at_eot=False, **kwargs))


@pytest.fixture(scope="module")
def expected(models):
    """Each backend's tokens by full forward passes, greedy and sampled."""
    return {b: {"greedy": reference(model, PROMPTS, 20), "sampled": reference(model, PROMPTS, 20, **SAMPLING)}
            for b, model in models.items()}


def test_every_backend_gives_the_same_tokens(expected):
    first = next(iter(expected.values()))
    for name, tokens in expected.items():
        for kind in ("greedy", "sampled"):
            np.testing.assert_array_equal(tokens[kind], first[kind], err_msg=f"{name} {kind}")


@pytest.mark.parametrize("engine", ENGINES, ids=engine_id)
def test_greedy_and_sampled_tokens_equal_full_forward_passes(models, expected, engine):
    """Ragged, left-padded prompts; ``generate`` sizes the cache for all 25 positions up front (32 slots)."""
    want = expected[engine[0]]
    np.testing.assert_array_equal(generated(models[engine[0]], engine, PROMPTS, 20), want["greedy"])
    np.testing.assert_array_equal(generated(models[engine[0]], engine, PROMPTS, 20, **SAMPLING), want["sampled"])


@pytest.mark.parametrize("engine", ENGINES, ids=engine_id)
def test_the_greedy_loop_gives_the_tokens_of_one_step_at_a_time(models, engine):
    """The engine's own greedy loop (``Decoder.greedy``, what ``generate`` runs at temperature 0) against the
    numpy sampler fed one step at a time, on ragged rows; with an end-of-text id, both stop once every row made
    it and leave zeros after (the id is one the middle row makes at its 4th token, the others later or never)."""
    decoder = backend_package(engine[0]).decoder(models[engine[0]], True, engine[1])
    ids, mask = left_pad(PROMPTS, 0)
    steps = sample_steps(decoder, ids, mask, 20)
    np.testing.assert_array_equal(decoder.greedy(ids, mask, 20), steps)
    eot = int(steps[1, 3])
    stopped = sample_steps(decoder, ids, mask, 20, eot)
    np.testing.assert_array_equal(decoder.greedy(ids, mask, 20, eot), stopped)
    assert (stopped == eot).any(axis=1).all() or (stopped[:, -1] != 0).any()  # a stop, or the full length


@pytest.mark.parametrize("backend", backends("decoding"))
@pytest.mark.parametrize("new_tokens, message", [(0, "new_tokens must be an integer >= 1"),
                                                 (True, "new_tokens must be an integer >= 1"),
                                                 (60, "positions > max_seq_len 64")])
def test_the_greedy_loop_refuses_bad_lengths(models, backend, new_tokens, message):
    ids, mask = left_pad(PROMPTS, 0)
    with pytest.raises(ValueError, match=message):
        backend_package(backend).decoder(models[backend]).greedy(ids, mask, new_tokens)


@pytest.mark.parametrize("backend", backends("decoding"))
def test_a_cache_sized_without_a_hint_moves_into_the_next_bucket(models, expected, backend):
    """Prefill without ``max_len``: 16 slots, outgrown after 10 steps, then 32; the tokens do not change."""
    decoder = backend_package(backend).decoder(models[backend])
    ids, mask = left_pad(PROMPTS, 0)
    logits, state = decoder.prefill(ids, mask)
    lengths, tokens = {np.shape(state.cache[0][0])[2]}, []
    for _ in range(20):
        tokens.append(logits.argmax(-1))
        mask = np.concatenate([mask, np.ones((len(PROMPTS), 1), np.int64)], axis=1)
        logits, state = decoder.step(tokens[-1][:, None], mask, state)
        lengths.add(np.shape(state.cache[0][0])[2])
    assert lengths == {16, 32}
    np.testing.assert_array_equal(np.stack(tokens, axis=1), expected[backend]["greedy"])


def test_the_reference_can_tell_a_different_sampler_seed(models, expected):
    other = reference(models["torch"], PROMPTS, 20, **{**SAMPLING, "seed": 12})
    assert not np.array_equal(other, expected["torch"]["sampled"])


def test_ragged_rows_generate_what_they_generate_alone(models):
    for name in backends("decoding"):
        together = generated(models[name], (name, False), PROMPTS, 12)
        for prompt, row in zip(PROMPTS, together):
            np.testing.assert_array_equal(row, generated(models[name], (name, False), [prompt], 12)[0])


@pytest.mark.parametrize("backend", backends("decoding"))
def test_static_cache_logits_match_recomputing_and_full_forward_passes(models, backend):
    """Step by step, on a ragged batch: the static cache, recomputing the prefix and a full forward agree."""
    model = models[backend]
    decoders = {cache: backend_package(backend).decoder(model, cache) for cache in (True, False)}
    ids, mask = left_pad(PROMPTS, 0)
    states = {}
    for cache, decoder in decoders.items():
        logits, states[cache] = decoder.prefill(ids, mask, ids.shape[1] + 8)
    for t in range(8):
        nxt = logits.argmax(-1)[:, None]
        ids, mask = np.concatenate([ids, nxt], 1), np.concatenate([mask, np.ones_like(nxt)], 1)
        out = {}
        for cache, decoder in decoders.items():
            out[cache], states[cache] = decoder.step(nxt, mask, states[cache])
        full = np.concatenate([llmdual.forward(model, row[m == 1][None])[:, -1] for row, m in zip(ids, mask)])
        np.testing.assert_allclose(out[True], full, atol=ATOL, rtol=0)
        np.testing.assert_allclose(out[False], full, atol=ATOL, rtol=0)
        logits = out[True]


def test_the_cache_is_read_a_wrong_slot_changes_the_logits(models):
    """The comparison can fail: zeroing one written slot of the cache moves the next step's logits."""
    decoder = backend_package("torch").decoder(models["torch"], True)
    ids, mask = left_pad([[5, 6, 7, 8]], 0)
    _, state = decoder.prefill(ids, mask, 8)
    step_mask = np.ones((1, 5), np.int64)
    good, _ = decoder.step(np.array([[9]]), step_mask, state)
    _, state = decoder.prefill(ids, mask, 8)
    for keys, values in state.cache:
        keys[:, :, 1].zero_()
        values[:, :, 1].zero_()
    bad, _ = decoder.step(np.array([[9]]), step_mask, state)
    assert np.abs(good - bad).max() > 100 * ATOL


def test_cache_lengths_are_buckets_within_the_context():
    assert [cache_length(n, 256) for n in (1, 16, 17, 95, 200, 256)] == [16, 16, 32, 128, 256, 256]
    assert cache_length(70, 64) == 70  # left padding can need more slots than positions: never fewer than needed


def test_the_compiled_steps_are_compiled_once(models):
    """TensorFlow with XLA traces the step graph and the greedy loop once per shape; torch.compile builds one step
    graph for generations of different lengths within a cache bucket (a token's strides must not leak into its
    guards), sampled step by step or looped greedily."""
    import torch._dynamo.utils

    from llmdual.backends.keras.decode import compiled

    generated(models["keras"], ("keras", True), [[1, 2, 3]], 12, **SAMPLING)
    generated(models["keras"], ("keras", True), [[1, 2, 3]], 12)
    step, loop = compiled(models["keras"], True), models["keras"]._decode_loop_tensorflow_xla
    before = step.experimental_get_tracing_count(), loop.experimental_get_tracing_count()
    generated(models["keras"], ("keras", True), [[4, 5, 6]], 12, **SAMPLING)
    generated(models["keras"], ("keras", True), [[4, 5, 6]], 12)
    after = step.experimental_get_tracing_count(), loop.experimental_get_tracing_count()
    assert after == before and min(before) >= 1  # the same shapes: no new trace
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for n in (12, 9):
        generated(models["torch"], ("torch", True), [[1, 2, 3]], n)
        generated(models["torch"], ("torch", True), [[1, 2, 3]], n, **SAMPLING)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


SCRIPT = """
import json, sys
import numpy as np
import keras, llmdual
from llmdual.contract import backend
from llmdual.core.decoding import sample_steps
from llmdual.generate import left_pad
prompts, sampling = json.loads(sys.argv[1]), json.loads(sys.argv[2])
model = llmdual.build(llmdual.Config.preset("tiny"), "keras", seed=3)
run = lambda **kw: np.stack(llmdual.generate(backend("keras").decoder(model), prompts, 20, stop_at_eot=False, **kw))
nocache = np.stack(llmdual.generate(model, prompts, 20, stop_at_eot=False, use_cache=False))
steps = sample_steps(backend("keras").decoder(model), *left_pad(prompts, 0), 20)
json.dump({"backend": keras.backend.backend(), "greedy": run().tolist(), "sampled": run(**sampling).tolist(),
           "nocache": nocache.tolist(), "steps": steps.tolist()}, sys.stdout)
"""


@pytest.mark.parametrize("keras_backend", other_hosts("keras"))
def test_keras_on_other_backends_gives_the_same_tokens(expected, keras_backend):
    env = {**os.environ, "KERAS_BACKEND": keras_backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(PROMPTS), json.dumps(SAMPLING)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == keras_backend
    want = expected["keras"]  # Keras on TensorFlow in this process
    np.testing.assert_array_equal(result["greedy"], want["greedy"])
    np.testing.assert_array_equal(result["nocache"], want["greedy"])
    np.testing.assert_array_equal(result["steps"], want["greedy"])  # generate's greedy runs the loop
    np.testing.assert_array_equal(result["sampled"], want["sampled"])
