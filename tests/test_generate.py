"""Generation in every backend that decodes: KV cache vs recompute, ragged batches, seeded sampling, text
prompts, stopping."""

import numpy as np
import pytest
from conftest import logits_dtype

import llmdual
from llmdual.contract import backends
from llmdual.generate import decoder_for, left_pad


@pytest.fixture(params=backends("decoding"))
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def models():
    config = llmdual.Config.preset("tiny")
    return {b: llmdual.build(config, b, seed=3) for b in backends("decoding")}


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["def add(a, b):\n    return a + b\n", "class Point:\n    x: int\n    y: int\n"] * 20
    return llmdual.Tokenizer.train(texts, vocab_size=300)


@pytest.fixture(scope="module")
def text_models(tokenizer):
    config = llmdual.Config.preset("tiny").replace(vocab_size=tokenizer.vocab_size)
    return {b: llmdual.build(config, b, seed=3) for b in backends("decoding")}


def reference_greedy(model, prompt: np.ndarray, n: int) -> np.ndarray:
    """Greedy decoding by full forward passes over the whole sequence: the definition the decoders must meet."""
    ids = np.asarray(prompt)[None, :]
    for _ in range(n):
        ids = np.concatenate([ids, llmdual.forward(model, ids)[:, -1].argmax(-1)[:, None]], axis=1)
    return ids[0, len(prompt):]


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_matches_full_forward_passes(models, backend, use_cache):
    prompt = np.array([5, 17, 99, 3], dtype=np.int64)
    out = llmdual.generate(models[backend], prompt, 24, use_cache=use_cache)
    np.testing.assert_array_equal(out, reference_greedy(models[backend], prompt, 24))


def test_ragged_batch_matches_each_prompt_alone(models, backend):
    """Left padding with a mask and shifted positions: each row generates what it would alone."""
    prompts = [[7, 8, 9, 10, 11, 12], [40], [3, 2, 1]]
    together = llmdual.generate(models[backend], prompts, 12)
    for prompt, out in zip(prompts, together):
        np.testing.assert_array_equal(out, llmdual.generate(models[backend], prompt, 12))


def test_seeded_sampling_gives_the_same_tokens_in_every_backend(models):
    prompts = np.array([[1, 2, 3], [4, 5, 6]])
    kwargs = dict(temperature=0.9, top_k=50, top_p=0.95, seed=11)
    outs = [np.stack(llmdual.generate(models[b], prompts, 20, **kwargs)) for b in backends("decoding")]
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    again = np.stack(llmdual.generate(models["torch"], prompts, 20, **{**kwargs, "seed": 12}))
    assert not np.array_equal(outs[0], again)  # the seed matters


def test_text_prompt_round_trips_through_the_tokenizer(text_models, tokenizer, backend):
    models = text_models
    out = llmdual.generate(models[backend], "def add(", 8, tokenizer=tokenizer, stop_at_eot=False)
    assert isinstance(out, str)
    ids = llmdual.generate(models[backend], tokenizer.encode("def add("), 8, stop_at_eot=False)
    assert out == tokenizer.decode(ids)
    batch = llmdual.generate(models[backend], ["def add(", "class"], 4, tokenizer=tokenizer)
    assert isinstance(batch, list) and len(batch) == 2


def test_generation_stops_at_end_of_text(models):
    model = models["torch"]
    prompt = [5, 6, 7]
    full = llmdual.generate(model, prompt, 10, stop_at_eot=False)
    eot = int(full[3])  # pretend the 4th generated token is end-of-text
    out = llmdual.generate(model, prompt, 10, eot_id=eot)
    np.testing.assert_array_equal(out, full[: list(full).index(eot)])


def test_kv_cache_is_static_and_fills_one_slot_per_step(models, backend):
    decoder = decoder_for(models[backend], use_cache=True)
    ids, mask = left_pad([[1, 2, 3]], pad_id=0)
    logits, state = decoder.prefill(ids, mask, max_len=10)
    assert logits.shape == (1, models[backend].config.vocab_size) and logits.dtype == logits_dtype(backend)
    mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
    _, state2 = decoder.step(np.array([[4]]), mask, state)
    keys = np.asarray(state2.cache[0][0])  # layer 0: [B, H, L, D]
    assert keys.shape[2] == np.shape(state.cache[0][0])[2] == 16  # allocated once, at the length bucket
    assert keys[:, :, :4].any(axis=-1).all() and not keys[:, :, 4:].any()  # slots 0-3 written, no more
    assert state2.ids.tolist() == [[1, 2, 3, 4]]


@pytest.mark.parametrize(
    "prompt, n, message",
    [
        ([], 4, "prompt must be"),
        ([[1, 2], []], 4, "prompt row 1 is empty"),
        ([1, 2], 0, "max_new_tokens must be an integer >= 1"),
        ([1] * 60, 10, "max_seq_len 64"),
        ("text", 4, "a text prompt needs tokenizer"),
        (np.zeros((1, 2, 3), dtype=np.int64), 4, "1-D or 2-D integer array"),
    ],
)
def test_bad_requests_are_refused(models, prompt, n, message):
    with pytest.raises(ValueError, match=message):
        llmdual.generate(models["torch"], prompt, n)


def test_a_classifier_cannot_generate():
    model = llmdual.build(llmdual.Config.preset("tiny"), "torch", task="classifier")
    with pytest.raises(ValueError, match="generation needs a task 'lm' model"):
        llmdual.generate(model, [1, 2], 3)
