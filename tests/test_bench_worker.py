"""The benchmark worker on real engines (tiny preset): the expected-outputs gate before timing, failures per case."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from llmdual.bench import expected, runner
from llmdual.bench.inputs import Inputs
from llmdual.bench.settings import BenchSettings, Case
from llmdual.core.config import Config

TINY = BenchSettings(preset="tiny", batch_sizes=(2,), seq_lens=(8,), new_tokens=3, warmup=0, repeats=2,
                     device="cpu", threads=1)


def case(engine, workload, batch_size=2, seq_len=8, expected=None, **changes):
    """A case at the tiny point, its settings changed by ``changes``."""
    settings = dataclasses.replace(TINY, **changes)
    return Case(engine, workload, settings, batch_size, seq_len, expected)


def test_check_accepts_the_expected_outputs_and_names_what_differs():
    want = {"infer.logits": np.ones((2, 3, 4), np.float32), "train.loss": np.array([9.0, 8.5]),
            "train.grad_norm": np.array([3.0, 2.0]), "generate.b1.tokens": np.array([[1, 2, 3]]),
            "generate.b1.logits": np.zeros((1, 4), np.float32)}
    diff, reason = expected.check("infer", {"logits": want["infer.logits"] + 5e-5}, want, 1e-4)
    assert diff == pytest.approx(5e-5, rel=1e-2) and reason is None  # float32 spacing near 1
    diff, reason = expected.check("infer", {"logits": want["infer.logits"] + 1e-3}, want, 1e-4)
    assert diff == pytest.approx(1e-3, rel=1e-3) and "infer logits" in reason and "> tolerance 0.0001" in reason
    _, reason = expected.check("train", {"loss": np.array([9.0, 8.5]), "grad_norm": np.array([3.0, 2.01])}, want, 1e-4)
    assert "grad_norm" in reason and "relative" in reason
    tokens = {"b1.tokens": np.array([[1, 2, 4]]), "b1.logits": want["generate.b1.logits"]}
    _, reason = expected.check("generate", tokens, want, 1e-4)
    assert "greedy tokens" in reason and "new token 2" in reason
    assert expected.check("generate", tokens, want, 1e-4, tokens_exact=False) == (0.0, None)
    looped = {"b1.looped.tokens": np.array([[1, 2, 3]])}  # the engine's own greedy loop: held to b1.tokens
    assert expected.check("generate", looped, want, 1e-4) == (0.0, None)
    _, reason = expected.check("generate", {"b1.looped.tokens": np.array([[1, 5, 3]])}, want, 1e-4)
    assert "b1.looped.tokens" in reason and "new token 1" in reason


def test_tolerances_follow_the_precision():
    fp32 = BenchSettings(device="cpu")
    assert fp32.tolerance == 1e-4 < BenchSettings(tf32=True, device="cuda").tolerance
    assert BenchSettings(tf32=True, device="cpu").tolerance == fp32.tolerance  # TF32 is a CUDA matmul mode
    assert BenchSettings(precision="bf16").tolerance > BenchSettings(precision="fp16").tolerance
    assert expected.exact_tokens("float32") and not expected.exact_tokens("bfloat16")


def test_inputs_are_the_same_everywhere_and_pad_the_classifier_rows():
    a, b = Inputs.of(TINY, 4, 8), Inputs.of(TINY, 4, 8)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y[:, :-1], a.x[:, 1:])
    assert a.mask[0].all() and a.mask.sum(axis=1).min() >= 4
    assert a.context.shape == (1, Config.preset("tiny").max_seq_len)
    assert a.prompts(3)["b1"].shape == (1, 3) and a.prompts(3)["batch"].shape == (4, 3)


@pytest.mark.parametrize("engine, workload, seq_len, changes, expect", [
    ("torch-compile", "generate", 8, {}, None),
    ("ort-keras-export", "train", 8, {}, "inference graphs"),
    ("ort-torch-export", "kv", 8, {}, "always uses its cache"),
    ("torch-eager", "train", 8, {"precision": "fp16"}, "CUDA"),
    ("ort-torch-export", "infer", 8, {"precision": "bf16"}, "float32"),
    ("hf-eager", "infer", 8, {"precision": "bf16"}, "float32"),
    ("hf-eager", "classify", 8, {}, "language models only"),
    ("nanogpt", "generate", 8, {}, "no KV cache"),
    ("keras-jax", "generate", 8, {"prompt_len": 4, "new_tokens": 70}, "max_seq_len"),
    ("keras-jax", "generate", 64, {"seq_lens": (64,), "new_tokens": 2}, "max_seq_len"),
    ("keras-jax", "generate", 8, {}, None),
])
def test_not_applicable_cases_say_why(engine, workload, seq_len, changes, expect):
    reason = case(engine, workload, seq_len=seq_len, **changes).not_applicable()
    assert (reason is None) if expect is None else (expect in reason and reason.startswith("not applicable"))


def test_an_engine_that_disagrees_is_refused_and_failing_cases_do_not_stop_the_others(tmp_path):
    """One worker process: perturbed expected outputs -> mismatch (nothing timed); none, or an exception in the
    engine -> failed, saying why; the last case still runs and is timed."""
    good = expected.compute(TINY, 2, 8, ["infer"])
    expected.save(tmp_path / "good.npz", good)
    expected.save(tmp_path / "off.npz", {"infer.logits": good["infer.logits"] * 1.01})
    specs = [case("torch-eager", "infer", expected=str(tmp_path / "off.npz")),
             case("torch-eager", "infer", expected=str(tmp_path / "missing.npz")),
             case("torch-eager", "infer", expected=str(tmp_path / "good.npz"), seq_len=100),
             case("torch-eager", "infer", expected=str(tmp_path / "good.npz"))]
    mismatch, missing, raised, ok = runner.run_group(specs, timeout_s=120)
    assert mismatch.status == "mismatch" and mismatch.measurements == {}
    assert "max abs difference" in mismatch.reason and mismatch.scalars["max_abs_diff"] > 1e-4
    assert missing.status == "failed" and "no expected outputs" in missing.reason
    assert raised.status == "failed" and raised.returncode is None  # the process went on
    assert raised.reason.startswith("ValueError: sequence too long") and ".py:" in raised.reason
    assert ok.status == "ok", ok.reason
    assert len(ok.measurements["tokens_per_s"]) == 2 and ok.scalars["max_abs_diff"] <= 1e-4
    assert ok.scalars["probe_flops"] > 0 and ok.scalars["peak_rss_mb"] > 0 and "warmup_s" in ok.scalars


def test_kv_workload_checks_both_decoders_then_times_one_step_each(tmp_path):
    good = expected.compute(TINY, 2, 8, ["kv"])
    assert np.abs(good["kv.cached.logits"] - good["kv.recompute.logits"]).max() < 1e-4
    expected.save(tmp_path / "kv.npz", good)
    [record] = runner.run_group([case("torch-eager", "kv", expected=str(tmp_path / "kv.npz"))], timeout_s=120)
    assert record.status == "ok", record.reason
    assert len(record.measurements["kv_cached_s"]) == len(record.measurements["kv_recompute_s"]) == 16


def test_the_worker_refuses_cases_of_several_engines_and_unreadable_ones():
    def worker(*cases):
        argv = [arg for i, text in enumerate(cases) for arg in ("--case-json", text, "--result", f"r{i}")]
        return subprocess.run([sys.executable, "-m", "llmdual.bench.worker", *argv], capture_output=True, text=True,
                              timeout=60, check=False)

    done = worker(case("torch-eager", "infer").to_json(), case("keras-jax", "infer").to_json())
    assert done.returncode == 2 and "share their engine" in done.stderr
    done = worker('{"engine": "torch-eager", "workload": "infer", "settings": {}}')
    assert done.returncode == 2 and "--case-json: a case is a JSON object with the fields" in done.stderr
