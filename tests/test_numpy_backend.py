"""The float64 NumPy reference: it equals Hugging Face's GPT-2 run in float64 to rounding, every other backend
agrees with it within the parity tolerance, its KV-cache decoding reproduces its own full forward, and it refuses
what it does not offer with the registry's one-line error."""

import dataclasses

import numpy as np
import pytest
import torch
import transformers

import llmdual
from llmdual import contract
from llmdual.contract import CAPABILITIES, backends
from llmdual.core.sampling import sample_next
from llmdual.core.weights import canonical_shapes, init_weights
from llmdual.generate import left_pad
from llmdual.quantize import weight_bytes

OTHERS = [b for b in backends("forward") if b != "numpy"]
PARITY = 1e-5  # float32 backends against float64: a few float32 ulps of O(1) values, through two blocks
EXACT = 1e-12  # float64 against float64: the same math in another order differs by ~1e-15 on O(1) values


def _hf_gpt2(tie: bool) -> transformers.GPT2LMHeadModel:
    """A random-init HF GPT-2 at odd sizes no other test uses (5 heads of 12, 3 layers, vocab 211)."""
    config = transformers.GPT2Config(vocab_size=211, n_positions=37, n_embd=60, n_layer=3, n_head=5,
                                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=tie)
    torch.manual_seed(1)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_matches_hf_gpt2(tie):
    hf = _hf_gpt2(tie)
    config, weights = llmdual.from_hf_gpt2(hf.state_dict(), hf.config.to_dict())
    model = llmdual.build(config, "numpy", weights=weights)
    ids = np.random.default_rng(1).integers(0, config.vocab_size, (3, config.max_seq_len))
    with torch.no_grad():
        hf32 = hf(torch.from_numpy(ids)).logits.numpy()
        hf64 = hf.double()(torch.from_numpy(ids)).logits.numpy()  # the same float32 weights, exactly, in float64
    logits = llmdual.forward(model, ids)
    assert logits.dtype == np.float64
    np.testing.assert_allclose(logits, hf32, atol=PARITY, rtol=0)
    # The real proof: HF's float64 run differs only by the rounding of another summation order.
    np.testing.assert_allclose(logits, hf64, atol=EXACT, rtol=0)


@pytest.mark.parametrize("other", OTHERS)
def test_other_backends_agree_with_the_reference(tiny, task, other):
    ids = np.random.default_rng(2).integers(0, tiny.vocab_size, (3, 11))
    mask = np.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[1, 7:] = 0  # right padding
    reference = llmdual.build(tiny, "numpy", task, seed=5)
    model = llmdual.build(tiny, other, task, seed=5)
    np.testing.assert_allclose(llmdual.forward(model, ids, mask), llmdual.forward(reference, ids, mask),
                               atol=PARITY, rtol=0)
    stages = contract.backend("numpy").intermediates(reference, ids, mask)
    theirs = contract.backend(other).intermediates(model, ids, mask)
    assert len(stages) == len(theirs) == 2 + 2 * tiny.n_layers
    for i, (ours, their) in enumerate(zip(stages, theirs)):
        assert ours.dtype == np.float64
        np.testing.assert_allclose(their, ours, atol=PARITY, rtol=0, err_msg=f"stage {i}")


def _lm(config):
    """The seed-0 LM with its matrices scaled up, so greedy decoding picks varied tokens."""
    weights = {k: v * 8 if v.ndim == 2 else v for k, v in init_weights(config, "lm", 0).items()}
    return llmdual.build(config, "numpy", weights=weights)


PROMPTS = [[5, 17, 200], [9, 1, 44, 120, 7, 33, 3, 250, 61], [100, 2, 77, 18, 40]]  # ragged: left-padded


def _full_forward_greedy(model, row, count):
    """Greedy tokens by re-running the whole unpadded sequence for each one."""
    seq = list(row)
    for _ in range(count):
        seq.append(int(llmdual.forward(model, np.array([seq]))[0, -1].argmax()))
    return seq[len(row):]


def test_greedy_generation_equals_full_forward_argmax(tiny):
    model = _lm(tiny)
    got = llmdual.generate(model, PROMPTS, 10)
    expected = [_full_forward_greedy(model, row, 10) for row in PROMPTS]
    assert [g.tolist() for g in got] == expected
    assert len({t for row in expected for t in row}) > 3  # the comparison is over varied tokens


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "recompute"])
def test_decoder_logits_match_full_forward(tiny, use_cache):
    model = _lm(tiny)
    decoder = contract.backend("numpy").decoder(model, use_cache)
    ids, mask = left_pad(PROMPTS, 0)
    logits, state = decoder.prefill(ids, mask)  # a 16-slot cache: the steps past it move it into 32 slots
    seqs = [list(row) for row in PROMPTS]
    for step in range(10):
        assert logits.dtype == np.float64
        for i, seq in enumerate(seqs):
            full = llmdual.forward(model, np.array([seq]))[0, -1]
            np.testing.assert_allclose(logits[i], full, atol=EXACT, rtol=0, err_msg=f"row {i} step {step}")
            seq.append(int(full.argmax()))
        mask = np.concatenate([mask, np.ones((len(seqs), 1), np.int64)], axis=1)
        logits, state = decoder.step(np.array([[seq[-1]] for seq in seqs]), mask, state)


def test_seeded_sampling_uses_the_shared_sampler(tiny):
    model = _lm(tiny)
    prompt = PROMPTS[1]
    got = llmdual.generate(model, prompt, 8, temperature=0.8, top_k=20, seed=7)
    rng, seq = np.random.default_rng(7), list(prompt)
    for _ in range(8):
        seq.append(int(sample_next(llmdual.forward(model, np.array([seq]))[:, -1], 0.8, 20, None, rng)[0]))
    assert got.tolist() == seq[len(prompt):]


def _assert_weights_equal(got, want):
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == np.float32 and np.array_equal(got[name], want[name]), name


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_weights_round_trip_bit_identical(tiny, task, tie):
    config = dataclasses.replace(tiny, tie_embeddings=tie)
    model = llmdual.build(config, "numpy", task, seed=3)
    assert contract.backend_name(model) == "numpy"
    assert model.wte.weight.dtype == np.float64  # stored in float64, handed out in float32
    _assert_weights_equal(llmdual.get_weights(model), init_weights(config, task, 3))
    llmdual.set_weights(model, init_weights(config, task, 4))
    _assert_weights_equal(llmdual.get_weights(model), init_weights(config, task, 4))
    assert weight_bytes(model) == 8 * sum(int(np.prod(s)) for s in canonical_shapes(config, task).values())


BAD_INPUTS = {
    "id out of range": (np.array([[1, 256]]), None),
    "negative id": (np.array([[-1, 2]]), None),
    "float ids": (np.array([[1.0, 2.0]]), None),
    "1-D ids": (np.array([1, 2]), None),
    "too long": (np.zeros((1, 65), np.int64), None),
    "mask value 2": (np.array([[1, 2]]), np.array([[1, 2]])),
    "mask shape": (np.array([[1, 2]]), np.array([[1, 1, 1]])),
    "empty mask row": (np.array([[1, 2]]), np.array([[0, 0]])),
}


@pytest.mark.parametrize("other", OTHERS)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_get_the_same_error(tiny, other, case):
    ids, mask = BAD_INPUTS[case]
    messages = []
    for name in ("numpy", other):
        with pytest.raises(ValueError) as err:
            llmdual.forward(llmdual.build(tiny, name), ids, mask)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_implements_what_it_registers(tiny):
    package = contract.backend("numpy")
    for capability, (protocol, _) in CAPABILITIES.items():
        if contract.info("numpy").offers(capability):
            missing = [n for n in vars(protocol) if not n.startswith("_") and not hasattr(package, n)]
            missing += [n for n in protocol.__annotations__ if not hasattr(package, n)]
            assert not missing, f"{capability}: {missing}"


def test_training_is_refused_in_one_line(tiny):
    model = llmdual.build(tiny, "numpy")
    able = ", ".join(backends("training"))
    with pytest.raises(ValueError, match=f"^backend 'numpy' does not train; backends that do: {able}$"):
        llmdual.train(model, np.zeros(256, np.int64), llmdual.TrainConfig(steps=1))


def test_imports_no_framework():
    """The reference runs on numpy alone: building, running and decoding it loads no deep-learning framework (the
    import contracts check the other backends; this package's own check lives here)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, llmdual\n"
            "m = llmdual.build(llmdual.Config.preset('tiny'), 'numpy')\n"
            "llmdual.forward(m, np.zeros((1, 4), np.int64)); llmdual.generate(m, [[1, 2]], 2)\n"
            "print(sorted(f for f in ('torch', 'tensorflow', 'keras', 'jax') if f in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
