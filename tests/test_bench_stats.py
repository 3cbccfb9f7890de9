"""Statistics and FLOP accounting of the benchmark, checked against numpy, known distributions and first principles."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmdual.bench import flops
from llmdual.bench.report import stats
from llmdual.core.config import PRESETS, Config
from llmdual.core.weights import canonical_shapes

finite = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)


def test_median_of_odd_list_is_the_middle_element():
    assert stats.median([9.0, 1.0, 5.0, 7.0, 3.0]) == 5.0


@settings(max_examples=40, deadline=None)
@given(st.lists(finite, min_size=1, max_size=40))
def test_median_percentiles_and_iqr_agree_with_numpy(values):
    array = np.array(values)
    assert stats.median(values) == pytest.approx(np.median(array))
    assert stats.percentiles(values) == pytest.approx(
        {"p50": np.percentile(array, 50), "p90": np.percentile(array, 90), "p99": np.percentile(array, 99)})
    assert stats.iqr(values) == pytest.approx(np.subtract(*np.percentile(array, [75, 25])))


@settings(max_examples=25, deadline=None)
@given(st.lists(finite, min_size=1, max_size=30), st.integers(0, 2**31))
def test_bootstrap_interval_lies_within_the_data(values, seed):
    low, high = stats.bootstrap_median_ci(values, n_boot=300, seed=seed)
    assert min(values) <= low <= high <= max(values)


def test_bootstrap_ci_contains_the_true_median_of_a_large_normal_sample():
    true_median = 10.0
    sample = np.random.default_rng(1).normal(true_median, 2.0, size=2000)
    low, high = stats.bootstrap_median_ci(sample, seed=3)
    assert low < true_median < high
    assert high - low < 0.5  # 2000 draws pin the median down far better than the spread of 2


def test_bootstrap_is_reproducible_for_a_seed_and_narrows_with_more_data():
    rng = np.random.default_rng(2)
    small, large = rng.normal(0, 1, 20), rng.normal(0, 1, 2000)
    assert stats.bootstrap_median_ci(small, seed=5) == stats.bootstrap_median_ci(small, seed=5)
    (low_l, high_l), (low_s, high_s) = (stats.bootstrap_median_ci(x, seed=5) for x in (large, small))
    assert high_l - low_l < high_s - low_s


def test_higher_confidence_gives_a_wider_interval():
    sample = np.random.default_rng(4).exponential(1.0, 200)
    low90, high90 = stats.bootstrap_median_ci(sample, confidence=0.90)
    low99, high99 = stats.bootstrap_median_ci(sample, confidence=0.99)
    assert low99 <= low90 and high90 <= high99 and (high99 - low99) > (high90 - low90)


def test_ratio_ci_contains_one_for_samples_from_the_same_distribution():
    rng = np.random.default_rng(5)
    a, b = rng.normal(1000, 30, 25), rng.normal(1000, 30, 25)
    ratio = stats.ratio_of_medians(a, b, seed=1)
    assert ratio.ratio == pytest.approx(np.median(a) / np.median(b))
    assert ratio.low <= ratio.ratio <= ratio.high
    assert ratio.within_noise and stats.within_noise(a, b, seed=1)


def test_ratio_ci_excludes_one_for_clearly_different_samples():
    rng = np.random.default_rng(6)
    fast, slow = rng.normal(1300, 20, 15), rng.normal(1000, 20, 15)
    ratio = stats.ratio_of_medians(fast, slow)
    assert 1.0 < ratio.low <= ratio.ratio <= ratio.high
    assert not ratio.within_noise and not stats.within_noise(slow, fast)
    flipped = stats.ratio_of_medians(slow, fast)
    assert flipped.high < 1.0


def test_bootstrap_handles_samples_larger_than_one_chunk():
    sample = np.random.default_rng(7).normal(5.0, 1.0, 30_000)
    low, high = stats.bootstrap_median_ci(sample, n_boot=200)
    assert low < np.median(sample) < high


def test_summarize_reports_every_figure_consistently():
    values = list(np.random.default_rng(8).lognormal(0, 0.3, 50))
    summary = stats.summarize(values)
    assert summary["n"] == 50
    assert summary["min"] <= summary["ci_low"] <= summary["median"] <= summary["ci_high"] <= summary["max"]
    assert summary["p50"] == pytest.approx(summary["median"])
    assert summary["p50"] <= summary["p90"] <= summary["p99"]
    assert summary["mean"] == pytest.approx(np.mean(values))


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_empty_or_non_finite_samples_are_rejected(bad):
    with pytest.raises(ValueError):
        stats.median(bad)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="percentile"):
        stats.percentile([1.0], 101)
    with pytest.raises(ValueError, match="confidence"):
        stats.bootstrap_median_ci([1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="positive"):
        stats.ratio_of_medians([1.0], [0.0])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_matmul_params_match_the_canonical_weight_shapes(preset):
    config = Config.preset(preset)
    shapes = canonical_shapes(config)
    projections = sum(int(np.prod(s)) for name, s in shapes.items() if name.startswith("h.") and len(s) == 2)
    lm_head = int(np.prod(shapes["wte.weight"]))  # the (tied) head multiplies every token by wte
    assert flops.matmul_params(config) == projections + lm_head
    assert flops.matmul_params(config, "classifier") == projections


def test_flops_per_token_follow_the_palm_accounting():
    config = Config.preset("small")
    seq = 128
    n = flops.matmul_params(config)
    # Scores (q . k over T keys) and the weighted sum of values, each 2 FLOPs per multiply-add, per layer.
    scores = values = 2 * seq * config.head_dim * config.n_heads
    attention = config.n_layers * (scores + values)
    assert flops.forward_flops_per_token(config, seq) == pytest.approx(2 * n + attention)
    assert flops.train_flops_per_token(config, seq) == pytest.approx(3 * flops.forward_flops_per_token(config, seq))
    assert flops.flops_per_unit(config, "train", seq) == flops.train_flops_per_token(config, seq)
    assert flops.flops_per_unit(config, "classify", seq) == pytest.approx(
        seq * flops.forward_flops_per_token(config, seq, "classifier"))
    assert flops.flops_per_unit(config, "generate", seq) is None
    with pytest.raises(ValueError, match="seq_len"):
        flops.forward_flops_per_token(config, config.max_seq_len + 1)


def test_matmul_rate_scales_with_size_and_time():
    base = flops.matmul_flop_rate(256, 0.01)
    assert flops.matmul_flop_rate(512, 0.01) == pytest.approx(8 * base)
    assert flops.matmul_flop_rate(256, 0.02) == pytest.approx(base / 2)
    assert flops.matmul_flop_rate(256, 0.01, count=3) == pytest.approx(3 * base)
    assert flops.utilisation(base / 4, base) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        flops.matmul_flop_rate(256, 0.0)


@pytest.mark.parametrize("name, model", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA A100 80GB PCIe", "A100"),
    ("Tesla T4", None),
])
def test_gpu_names_map_to_datasheet_rows(name, model):
    assert flops.gpu_model(name) == model
    peaks = [flops.datasheet_peak(name, p) for p in ("fp32", "tf32", "bf16")]
    if model is None:
        assert peaks == [None, None, None]
    else:  # tensor cores: bf16 beats tf32 beats plain fp32
        assert peaks[0] < peaks[1] < peaks[2]
        assert flops.datasheet_peak(name, "fp16") == peaks[2]


def test_precision_follows_dtype_and_tf32_switch():
    assert flops.precision_of("bfloat16") == "bf16"
    assert flops.precision_of("float32") == "fp32"
    assert flops.precision_of("float32", tf32=True) == "tf32"
    assert flops.precision_of("float16", tf32=True) == "fp16"
    with pytest.raises(ValueError, match="dtype"):
        flops.precision_of("int8")
