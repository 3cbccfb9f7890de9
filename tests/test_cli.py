"""The ``llmdual`` command end to end in subprocesses: train -> generate -> export -> serve -> evaluate on the
tiny preset, parity on a user's model file, and one-line errors (never a traceback) on bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import numpy as np
import pytest
import tomllib

import llmdual
from llmdual.serve.load import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "llmdual.cli", *args], check=False, capture_output=True, text=True,
                          env=env,
                          cwd=cwd, timeout=300)
    if check:
        assert done.returncode == 0, f"llmdual {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "m.safetensors"
    done = cli("train", "--preset", "tiny", "--out", str(out), "--set", "vocab_size=300", "--set", "steps=3",
               "--set", "files=4", "--set", "train.seed=1")
    assert "trained torch for 3 steps" in done.stdout
    return out


def test_train_writes_model_tokenizer_and_resolved_config(trained):
    resolved = json.loads(trained.with_name("m.config.json").read_text())
    assert resolved["model"]["vocab_size"] == 300 and resolved["model"]["d_model"] == 64
    assert resolved["train"]["steps"] == 3 and resolved["train"]["seed"] == 1 and resolved["data"]["files"] == 4
    assert llmdual.Tokenizer.load(trained.with_name("m.tokenizer.json")).vocab_size <= 300
    assert llmdual.load(trained, "torch").config.vocab_size == 300


def test_generate_export_serve_evaluate(trained):
    model = llmdual.load(trained, "torch")
    expected = llmdual.generate(model, [5, 6, 7], 8, stop_at_eot=False)
    ids = cli("generate", str(trained), "--ids", "5,6,7", "--max-new-tokens", "8").stdout.split()
    assert [int(i) for i in ids] == expected.tolist()[: len(ids)]
    keras_ids = cli("generate", str(trained), "--ids", "5,6,7", "--max-new-tokens", "8", "--engine", "keras").stdout
    assert keras_ids.split() == ids
    assert isinstance(cli("generate", str(trained), "--prompt", "def ", "--max-new-tokens", "4").stdout, str)

    onnx_path = trained.with_name("m.onnx")
    done = cli("export", str(trained), str(onnx_path), "--kv-cache")
    assert onnx_path.is_file() and "verified" in done.stdout

    with ServerProcess(onnx_path, "onnx", trained.with_name("m.tokenizer.json")) as server:
        answer = httpx.post(f"{server.url}/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 8,
                                                                 "temperature": 0}, timeout=60).json()
        assert answer["choices"][0]["token_ids"] == [int(i) for i in ids]
        assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once it has shut down

    metrics = json.loads(cli("evaluate", str(trained), "--files", "4").stdout)
    onnx_metrics = json.loads(cli("evaluate", str(onnx_path), "--engine", "onnx", "--files", "4",
                                  "--tokenizer", str(trained.with_name("m.tokenizer.json"))).stdout)
    assert np.isfinite(metrics["loss"]) and abs(metrics["loss"] - onnx_metrics["loss"]) < 1e-4


def test_parity_on_a_model_file_writes_junit_and_json(trained, tmp_path):
    done = cli("parity", "--checkpoint", str(trained), "--checks", "model", "--junit", str(tmp_path / "p.xml"),
               "--json", str(tmp_path / "p.json"))
    suites = ET.parse(tmp_path / "p.xml").getroot()
    cases = suites.findall("testsuite/testcase")
    assert cases and suites.find("testsuite").get("failures") == "0"
    assert json.loads((tmp_path / "p.json").read_text())[0]["task"] == "lm"
    assert "logits" in done.stdout


@pytest.mark.parametrize("args,needle", [
    (["generate", "missing.safetensors", "--ids", "1"], "no such file"),
    (["generate", "{model}", "--ids", "1,x"], "comma-separated integers"),
    (["generate", "{model}", "--ids", "1", "--max-new-tokens", "0"], "max_new_tokens"),
    (["generate", "{model}", "--ids", "999"], "999"),
    (["train", "--out", "x.safetensors", "--set", "nonsense=1"], "unknown setting 'nonsense'"),
    (["train", "--out", "x.safetensors"], "vocab_size 256 is too small"),
    (["export", "{model}", "out.bin", "--format", "zip"], "invalid choice"),
    (["serve", "{model}", "--engine", "tflite"], "invalid choice"),
    (["parity", "--checks", "nothing"], "unknown parity check group"),
])
def test_bad_input_is_one_line_error(trained, tmp_path, args, needle):
    done = cli(*[a.format(model=trained) for a in args], check=False, cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert needle in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(("llmdual", "usage"))


@pytest.mark.parametrize("command", ["parity", "train", "generate", "evaluate", "export", "serve"])
def test_every_subcommand_has_help(command):
    out = cli(command, "--help").stdout
    assert out.startswith("usage: llmdual " + command) and "--" in out


def test_compare_runs_the_benchmark_command_line():
    assert "--engines" in cli("compare", "--help").stdout


def test_console_script_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["llmdual"] == "llmdual.cli:main"
