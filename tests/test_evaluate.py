"""Evaluation: the metrics' definitions, and the same numbers from every backend on the same weights."""

import math

import numpy as np
import pytest

import llmdual
from llmdual.contract import backends
from llmdual.evaluate import cross_entropy_sum, macro_f1


def test_uniform_logits_cost_log_vocab_per_counted_target():
    logits = np.zeros((2, 3, 10), np.float32)
    targets = np.array([[1, 2, -100], [4, -100, -100]])
    total, count = cross_entropy_sum(logits, targets)
    assert count == 3 and total == pytest.approx(3 * math.log(10))


def test_macro_f1_averages_per_class_f1():
    labels = np.array([0, 0, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0])
    # class 0: tp 1, 2 predicted, 2 actual -> 0.5; class 1: tp 2, 3 predicted, 2 actual -> 0.8; class 2: 0
    assert macro_f1(predictions, labels, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1(labels, labels, 3) == 1.0


def lm_batches(config, n=3):
    rng = np.random.default_rng(0)
    shape = (2, 16)
    return [(rng.integers(0, config.vocab_size, shape), rng.integers(0, config.vocab_size, shape)) for _ in range(n)]


def test_lm_metrics_agree_across_backends(tiny):
    batches = lm_batches(tiny)
    results = [llmdual.evaluate(llmdual.build(tiny, b, seed=2), batches) for b in backends()]
    assert [r["tokens"] for r in results] == [3 * 2 * 16] * len(results)
    # float32 logits rounded in a different order (or float64's): the mean loss agrees to a few ulps
    assert [r["loss"] for r in results] == pytest.approx([results[0]["loss"]] * len(results), rel=1e-6)
    assert results[0]["perplexity"] == pytest.approx(math.exp(results[0]["loss"]))
    # an untrained model is close to uniform over the vocabulary
    assert results[0]["loss"] == pytest.approx(math.log(tiny.vocab_size), rel=0.05)


def test_classifier_metrics_agree_across_backends(tiny):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, tiny.vocab_size, (8, 12))
    mask = (np.arange(12)[None] < rng.integers(3, 13, (8, 1))).astype(np.int64)
    batches = [(ids, mask, rng.integers(0, tiny.num_classes, 8))]
    results = [llmdual.evaluate(llmdual.build(tiny, b, "classifier", seed=2), batches) for b in backends()]
    assert results[0]["examples"] == 8
    for result in results[1:]:
        assert result["accuracy"] == results[0]["accuracy"] and result["macro_f1"] == results[0]["macro_f1"]
        assert result["loss"] == pytest.approx(results[0]["loss"], rel=1e-6)


def test_nothing_to_evaluate_is_an_error(tiny):
    model = llmdual.build(tiny, "torch")
    batch = (np.zeros((1, 4), np.int64), np.full((1, 4), -100))
    with pytest.raises(ValueError, match="no 'val' examples"):
        llmdual.evaluate(model, [batch])
