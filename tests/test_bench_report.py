"""The results document (schema, files) and its rendering: tables, the Markdown verdict, PNG charts."""

import copy
import io
import json

import numpy as np
import pytest
from matplotlib.image import imread
from rich.console import Console

from llmdual.bench.report import charts, results, tables, units, verdict
from llmdual.core.config import Config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = Config.preset("tiny").to_dict()


def run(engine, workload, values, status="ok", reason=None, rnd=0, metric=None, scalars=None, **settings):
    """A run record as the runner writes it."""
    metric = metric or results.WORKLOAD_METRICS[workload][0]
    point = {"config": TINY, "batch_size": 4, "seq_len": 32, "device": "cpu", "dtype": "float32", **settings}
    return {"engine": engine, "workload": workload, "settings": point, "round": rnd, "status": status,
            "reason": reason, "measurements": {metric: list(map(float, values))} if values is not None else {},
            "scalars": {"warmup_s": 1.5, "build_s": 0.25, **(scalars or {})}, "returncode": 0, "wall_s": 3.0,
            "child_peak_rss_mb": 300.0, "stderr_tail": ""}


def sample(mean, seed, n=15, spread=10.0):
    return np.random.default_rng(seed).normal(mean, spread, n)


@pytest.fixture
def doc():
    runs = [
        run("torch-eager", "train", sample(1000, 1), scalars={"peak_rss_mb": 500.0}),
        run("keras-jax", "train", sample(700, 2), scalars={"peak_rss_mb": 900.0}),
        run("keras-tensorflow", "train", None, status="crashed", reason="killed by signal SIGKILL (likely OOM)"),
        run("torch-eager", "infer", sample(5000, 3, spread=150)),
        run("keras-jax", "infer", sample(5000, 4, spread=150)),
        run("torch-eager", "generate", sample(80, 5), metric="tokens_per_s_b1"),
    ]
    return results.build_document({"gpus": [], "python": "3.11"}, {"seed": 0, "rounds": 1}, runs)


def test_a_built_document_validates_and_survives_a_file_round_trip(doc, tmp_path):
    path = results.write_json(tmp_path / "out" / "results.json", doc)
    assert results.read_json(path) == json.loads(json.dumps(doc))
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary file left behind
    assert doc["summary"]["counts"]["ok"] == 5 and doc["summary"]["counts"]["crashed"] == 1
    assert doc["schema"] == "llmdual.bench/2"


@pytest.mark.parametrize("change, named", [
    ({"status": "exploded"}, "status"),
    ({"status": "failed", "reason": None}, "must give a reason"),
    ({"measurements": {"tokens_per_s": [1.0, float("nan")]}}, "measurements.tokens_per_s"),
    ({"scalars": {"build_s": [1]}}, "scalars.build_s"),
    ({"colour": "red"}, "unknown record fields"),
    ({"engine": 3}, "engine and workload"),
])
def test_a_record_is_checked_field_by_field(change, named):
    good = run("torch-eager", "train", [1.0, 2.0])
    assert results.Record.from_dict(good).to_dict() == good
    with pytest.raises(ValueError, match=named):
        results.Record.from_dict({**good, **change})


@pytest.mark.parametrize("break_it, named", [
    (lambda d: d.pop("cases"), "'cases'"),
    (lambda d: d.update(schema="llmdual.bench/1"), "schema"),
    (lambda d: d.update(env=[]), "env"),
    (lambda d: d["cases"][0].update(status="exploded"), "cases[0].status"),
    (lambda d: d["cases"][1].pop("engine"), "'engine'"),
    (lambda d: d["cases"][2].update(reason=None), "cases[2].reason"),
    (lambda d: d["cases"][0]["measurements"].update(tokens_per_s=["fast"]), "cases[0].measurements.tokens_per_s"),
    (lambda d: d["cases"][0].update(workload="dance"), "cases[0].workload"),
    (lambda d: d["summary"].pop("groups"), "summary.groups"),
])
def test_validate_rejects_a_broken_document_naming_the_problem(doc, break_it, named):
    bad = copy.deepcopy(doc)
    break_it(bad)
    with pytest.raises(ValueError) as error:
        results.validate(bad)
    assert named in str(error.value)


def test_write_json_refuses_an_invalid_document_and_keeps_the_old_file(doc, tmp_path):
    path = results.write_json(tmp_path / "results.json", doc)
    before = path.read_text()
    bad = copy.deepcopy(doc)
    bad["cases"][0]["status"] = "exploded"
    with pytest.raises(ValueError, match="status"):
        results.write_json(path, bad)
    assert path.read_text() == before


def test_jsonl_keeps_records_and_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "runs.jsonl"
    records = [run("torch-eager", "train", [1.0, 2.0]), run("keras-jax", "train", [3.0])]
    for record in records:
        results.append_jsonl(path, record)
    assert results.read_jsonl(path) == records
    with path.open("a") as handle:
        handle.write('{"engine": "torch-comp')  # the process died mid-write
    assert results.read_jsonl(path) == records
    path.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        results.read_jsonl(path)


def test_rounds_merge_into_one_case_with_every_measurement(doc):
    runs = [run("torch-eager", "train", [10.0, 11.0], rnd=0), run("torch-eager", "train", [12.0], rnd=1),
            run("torch-eager", "train", None, status="timeout", reason="timed out after 9 s", rnd=2)]
    [case] = results.merge_runs(runs)
    assert case["measurements"]["tokens_per_s"] == [10.0, 11.0, 12.0]
    assert case["measurements"]["peak_rss_mb"] == [300.0, 300.0]  # runner's figure when the worker gave none
    assert case["status"] == "timeout" and "round 2" in case["reason"] and "2 of 3" in case["reason"]
    assert case["stats"]["tokens_per_s"]["median"] == 11.0
    assert len(case["runs"]) == 3


def test_summary_ranks_engines_with_ratios_to_the_best(doc):
    [train] = [g for g in doc["summary"]["groups"] if g["workload"] == "train" and g["metric"] == "tokens_per_s"]
    best, other = train["entries"]
    assert (best["engine"], other["engine"]) == ("torch-eager", "keras-jax")
    jax = doc["cases"][other["case"]]["measurements"]["tokens_per_s"]
    torch = doc["cases"][best["case"]]["measurements"]["tokens_per_s"]
    assert other["relative"] == pytest.approx(np.median(jax) / np.median(torch))
    assert other["relative_ci"][0] <= other["relative"] <= other["relative_ci"][1] < 1.0
    assert best["relative"] == 1.0 and not other["within_noise"]
    [memory] = [g for g in doc["summary"]["groups"] if g["workload"] == "train" and g["metric"] == "peak_rss_mb"]
    assert [e["engine"] for e in memory["entries"]] == ["torch-eager", "keras-jax"]  # less memory ranks first


def test_flops_are_derived_for_ok_throughput_cases(doc):
    torch_train = next(c for c in doc["cases"] if c["engine"] == "torch-eager" and c["workload"] == "train")
    f = torch_train["flops"]
    median = torch_train["stats"]["tokens_per_s"]["median"]
    assert f["achieved"] == pytest.approx(median * f["per_unit"]) and f["peak"] is None
    generate = next(c for c in doc["cases"] if c["workload"] == "generate")
    assert generate["flops"] is None
    given = results.build_document({}, {"peak_flops": 4 * f["achieved"]}, [run("torch-eager", "train", [1000.0])])
    assert given["cases"][0]["flops"]["peak_source"] == "given"
    gpu = results.build_document({"gpus": [{"name": "NVIDIA H100 PCIe", "driver": "1"}]}, {},
                                 [run("torch-eager", "train", [1000.0], device="cuda", dtype="bfloat16")])
    assert gpu["cases"][0]["flops"]["peak_source"] == "datasheet H100 PCIe bf16"
    assert 0 < gpu["cases"][0]["flops"]["utilisation"] < 1


def test_markdown_names_the_winner_with_its_interval(doc):
    md = tables.markdown_report(doc, "training")
    [line] = [l for l in md.splitlines() if l.startswith("- **train**, throughput")]
    torch = next(c for c in doc["cases"] if c["engine"] == "torch-eager" and c["workload"] == "train")
    jax = next(c for c in doc["cases"] if c["engine"] == "keras-jax" and c["workload"] == "train")
    factor = np.median(torch["measurements"]["tokens_per_s"]) / np.median(jax["measurements"]["tokens_per_s"])
    assert "**PyTorch** wins" in line and f"{factor:.2f}×" in line and "95% CI" in line and "Keras/JAX" in line
    assert "within noise" not in line
    assert "## Verdict (priority: training)" in md
    assert "keras-tensorflow train was crashed" in md and "SIGKILL" in md
    for section in ("## Environment", "## Settings", "### train", "### infer", "### generate"):
        assert section in md


def test_markdown_says_within_noise_for_overlapping_samples(doc):
    lines = verdict.verdict(doc, "inference")
    [infer] = [l for l in lines if l.startswith("- **infer**, throughput")]
    assert "within noise" in infer and "** wins" not in infer and "neither wins" in infer
    assert "PyTorch" in infer and "Keras/JAX" in infer
    assert any("no framework is ahead beyond noise" in l for l in lines)


def test_memory_priority_compares_peak_memory(doc):
    lines = verdict.verdict(doc, "memory")
    train = lines[0]  # the memory priority puts memory first
    assert train.startswith("- **train**, peak RSS")
    assert "**PyTorch** wins" in train and "lower" in train
    assert "One measurement each" in train
    with pytest.raises(ValueError, match="priority"):
        verdict.verdict(doc, "speed")


def test_a_single_framework_has_nothing_to_compare(doc):
    [line] = [l for l in verdict.verdict(doc, "generation") if l.startswith("- **generate**, tokens/s")]
    assert "only PyTorch ran" in line


def test_tables_show_figures_ratios_and_reasons(doc):
    header, rows = tables.workload_table(doc, "train")
    assert rows[0][0] == "torch-eager" and rows[-1][0] == "keras-tensorflow"
    assert rows[0][header.index("vs fastest")] == "fastest"
    assert rows[1][header.index("vs fastest")].endswith("]")
    assert rows[-1][-1].startswith("crashed: killed by signal")
    assert rows[0][header.index("build / warm-up")] == "250 ms / 1.5 s"
    console = Console(file=io.StringIO(), width=250)
    tables.print_tables(doc, console)
    out = console.file.getvalue()
    assert "torch-eager" in out and "keras-tensorflow" in out and "tok/s" in out
    lines = []
    tables.print_tables(doc, lines.append)  # without rich: aligned plain text
    plain = "\n".join(lines)
    assert plain.startswith("train\n") and "┃" not in plain
    assert any(line.startswith("torch-eager ") and "fastest" in line for line in plain.splitlines())


@pytest.mark.parametrize("value, unit, shown", [
    (0.00025, "s", "250 µs"), (0.0123, "s", "12.3 ms"), (2.5, "s", "2.5 s"),
    (12345.6, "tok/s", "12,346 tok/s"), (42.42, "seq/s", "42.4 seq/s"), (2048.0, "MB", "2.00 GB"), (None, "s", "–"),
])
def test_values_are_formatted_with_units(value, unit, shown):
    assert units.format_value(value, unit) == shown


def _check_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_report_writes_markdown_and_valid_pngs(doc, tmp_path):
    pngs = charts.write_charts(doc, tmp_path / "report")
    assert sorted(p.name for p in pngs) == ["memory.png", "throughput_generate.png", "throughput_infer.png",
                                            "throughput_train.png", "warmup.png"]
    for path in pngs:
        _check_png(path)
    md = tables.write_report(doc, tmp_path / "report", "training", pngs).read_text()
    assert "![throughput_train](throughput_train.png)" in md


def test_a_chart_without_matplotlib_names_the_extra(doc, tmp_path, monkeypatch):
    monkeypatch.setattr(charts, "available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install 'llmdual\[report\]'"):
        charts.write_charts(doc, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_reference_engines_are_ranked_but_never_recommended(doc):
    runs = [run("torch-eager", "train", sample(1000, 1)), run("hf-eager", "train", sample(3000, 2))]
    mixed = results.build_document({}, {"seed": 0}, runs)
    [group] = [g for g in mixed["summary"]["groups"] if g["metric"] == "tokens_per_s"]
    assert [e["engine"] for e in group["entries"]] == ["hf-eager", "torch-eager"]
    [line] = [line for line in verdict.verdict(mixed, "training") if line.startswith("- **train**, throughput")]
    assert "only PyTorch ran" in line and "HF" not in line


def test_sweep_plot_is_written_when_batch_sizes_vary(tmp_path):
    runs = [run(engine, "infer", sample(rate * batch, batch), batch_size=batch)
            for engine, rate in (("torch-eager", 100), ("keras-jax", 90)) for batch in (1, 2, 4, 8)]
    doc = results.build_document({}, {}, runs)
    paths = charts.write_charts(doc, tmp_path)
    assert tmp_path / "sweep_infer_batch_size.png" in paths
    _check_png(tmp_path / "sweep_infer_batch_size.png")
    header, rows = tables.workload_table(doc, "infer")
    assert "batch_size" in header and len(rows) == 8
    lines = verdict.verdict(doc, "inference")
    assert sum(l.startswith("- **infer** (batch_size ") and ", throughput:" in l for l in lines) == 4
