"""The verdict over recorded run records: winners with intervals, the settings a winner needs next to its
default-settings result, noise, stability between runs, caveats, readable settings and chart styling."""

import numpy as np
import pytest
from matplotlib.image import imread

from llmdual.bench.engines.table import ENGINES
from llmdual.bench.report import charts, results, tables, verdict
from llmdual.core.config import Config

TINY = Config.preset("tiny").to_dict()


def run(engine, workload, values, metric=None, warmup=1.5, rss=300.0, **extra):
    """A run record as the runner writes it (one round)."""
    metric = metric or results.WORKLOAD_METRICS[workload][0]
    point = {"config": TINY, "batch_size": 4, "seq_len": 32, "device": "cpu", "dtype": "float32"}
    return {"engine": engine, "workload": workload, "settings": point, "round": 0, "status": "ok", "reason": None,
            "measurements": {metric: list(map(float, values)), **extra}, "scalars": {"warmup_s": warmup},
            "returncode": 0, "wall_s": 3.0, "child_peak_rss_mb": rss, "stderr_tail": ""}


def sample(mean, seed, n=15, spread=10.0):
    return np.random.default_rng(seed).normal(mean, spread, n)


def document(runs, **env):
    settings = {"seed": 0, "preset": "tiny", "config": TINY, "points": [[4, 32]], "probe_flops": 3.24e11,
                "probe_source": "best matmul probe of the run (torch-eager)", "dtype": "float32", "threads": 2}
    return results.build_document({"gpus": [], "threads": 2, "cpu_model": "Test CPU", **env}, settings, runs)


def trio(seed=0, xla=1200.0):
    """Keras/TF wins training only with jit_compile=True; its default engine is well behind PyTorch."""
    return document([run("keras-tensorflow-xla", "train", sample(xla, seed + 1)),
                     run("keras-tensorflow", "train", sample(400, seed + 2)),
                     run("torch-eager", "train", sample(1000, seed + 3))])


def test_a_winner_that_needs_a_setting_is_named_with_its_default_settings_result():
    doc = trio()
    [line] = [l for l in verdict.verdict(doc, "training") if l.startswith("- **train**, throughput")]
    medians = {c["engine"]: np.median(c["measurements"]["tokens_per_s"]) for c in doc["cases"]}
    assert "**Keras/TensorFlow** wins" in line
    assert f"{medians['keras-tensorflow-xla'] / medians['torch-eager']:.2f}×" in line
    assert "keras-tensorflow-xla needs `jit_compile=True`" in line and "with default settings (keras-tensorflow" in line
    assert f"it is {medians['keras-tensorflow'] / medians['torch-eager']:.2f}×" in line and "of PyTorch" in line


def test_a_default_engine_left_out_of_the_run_is_said_to_be_missing():
    doc = document([run("keras-tensorflow-xla", "train", sample(1200, 1)),
                    run("torch-eager", "train", sample(1000, 3))])
    [line] = [l for l in verdict.verdict(doc, "training") if l.startswith("- **train**, throughput")]
    assert "needs `jit_compile=True`; keras-tensorflow, its default settings, was not measured here" in line
    close = document([run("keras-tensorflow-xla", "train", sample(1030, 1)), run("keras-tensorflow", "train",
                      sample(400, 2)), run("torch-eager", "train", sample(1000, 3))])
    [line] = [l for l in verdict.verdict(close, "training") if l.startswith("- **train**, throughput")]
    assert line.split(": ")[1].startswith("within noise") and "keras-tensorflow-xla needs `jit_compile=True`" in line


def test_the_verdict_covers_memory_and_warm_up_as_well_as_speed():
    doc = document([run("torch-eager", "infer", sample(1000, 1), warmup=1.0, rss=300.0),
                    run("keras-jax", "infer", sample(800, 2), warmup=20.0, rss=800.0)])
    lines = verdict.verdict(doc, "inference")
    assert lines[0].startswith("- **infer**, throughput: **PyTorch** wins")
    [memory] = [l for l in lines if "peak RSS" in l]
    [warm] = [l for l in lines if "warm-up and compilation" in l]
    assert "**PyTorch** wins" in memory and "lower peak RSS" in memory
    assert "**PyTorch** wins: 20.00×" in warm and "better warm-up" in warm


def test_a_lead_inside_the_run_to_run_margin_is_noise_even_when_its_interval_excludes_one():
    """Throughput 3% apart with a tight interval; memory 8% and warm-up 1.4x apart, one measurement each: each
    stays under its margin (15%, 10%, 1.5x), so no framework wins; wider leads still win."""
    doc = document([run("torch-eager", "infer", sample(1030, 1, spread=2), warmup=1.4, rss=324.0),
                    run("keras-jax", "infer", sample(1000, 2, spread=2), warmup=1.0, rss=300.0)])
    lines = verdict.verdict(doc, "inference")
    speed, memory, warm = (next(l for l in lines if what in l) for what in ("throughput", "peak RSS", "warm-up"))
    assert "within noise" in speed and "does not clear the 1.15× a win needs" in speed and "(95% CI 1.0" in speed
    assert "within noise" in memory and "1.10×" in memory
    assert "within noise" in warm and "1.50×" in warm
    wide = document([run("torch-eager", "infer", sample(1200, 1, spread=2), warmup=1.6, rss=340.0),
                     run("keras-jax", "infer", sample(1000, 2, spread=2), warmup=1.0, rss=300.0)])
    assert set(verdict.winners(wide).values()) == {"PyTorch", "Keras/JAX"}  # faster; less memory, faster warm-up


def test_table_cells_whose_interval_contains_one_are_marked_noise():
    doc = document([run("torch-eager", "infer", sample(5000, 3, spread=150)),
                    run("keras-jax", "infer", sample(5000, 4, spread=150)),
                    run("keras-torch", "infer", sample(2500, 5, spread=50))])
    header, rows = tables.workload_table(doc, "infer")
    column = [row[header.index("vs fastest")] for row in rows]
    assert column[0] == "fastest" and column[1].endswith(" noise") and not column[2].endswith("noise")


def test_back_to_back_runs_of_the_same_truth_give_the_same_verdict_and_a_changed_truth_does_not():
    first, second = verdict.winners(trio(seed=0)), verdict.winners(trio(seed=100))
    assert first == second and first["train tokens_per_s"] == "Keras/TensorFlow"
    flipped = verdict.winners(trio(seed=0, xla=800.0))
    assert flipped["train tokens_per_s"] == "PyTorch"


def test_caveats_state_precision_and_scale():
    doc = document([run("torch-eager", "infer", sample(1000, 1)), run("keras-jax", "infer", sample(500, 2))],
                   cpu_bf16=["amx_bf16"])
    precision, scale = verdict.caveats(doc)
    assert "every figure is float32" in precision and "amx_bf16" in precision and "--precision bf16" in precision
    assert "Test CPU with 2 threads" in scale and "tiny model (" in scale and "batch 4 × 32" in scale
    assert "--device cuda" in scale


def test_settings_read_as_words_not_a_raw_dump():
    md = tables.markdown_report(trio(), "training")
    assert "- Matmul peak 324 GFLOP/s (best matmul probe of the run (torch-eager))" in md
    assert "probe_flops" not in md and "`{" not in md


def test_every_framework_has_its_own_fixed_colour_and_compiled_engines_are_hatched():
    frameworks = {engine.framework for engine in ENGINES.values()}
    assert {engine.framework for engine in ENGINES.values() if not engine.generic} <= set(charts.FRAMEWORK_COLOURS)
    colours = {charts.colour_of(framework) for framework in frameworks}
    assert len(colours) == len(frameworks) and charts.OTHER_COLOUR not in colours  # generic ones too
    assert charts._hatch("keras-tensorflow-xla") and not charts._hatch("keras-tensorflow")
    assert charts._hatch("torch-compile") and not charts._hatch("torch-eager")


def test_generation_latency_chart_is_written(tmp_path):
    extra = {"ttft_s": [0.02, 0.021, 0.019], "token_latency_s": [0.010, 0.011, 0.012, 0.03]}
    doc = document([run("torch-eager", "generate", sample(80, 5), metric="tokens_per_s_b1", **extra),
                    run("keras-jax", "generate", sample(60, 6), metric="tokens_per_s_b1", **extra)])
    paths = charts.write_charts(doc, tmp_path)
    assert tmp_path / "latency_generate.png" in paths and tmp_path / "warmup.png" in paths
    image = imread(tmp_path / "latency_generate.png")
    assert image.ndim == 3 and image.shape[1] > 1000  # three panels side by side


@pytest.mark.parametrize("priority", sorted(verdict.PRIORITIES))
def test_every_priority_ends_with_the_caveats(priority):
    lines = verdict.verdict(trio(), priority)
    assert lines[-2].startswith("- Precision:") and lines[-1].startswith("- Scale:")
