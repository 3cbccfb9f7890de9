"""The ``llmdual`` command end to end in subprocesses: train -> generate -> export -> serve -> evaluate on the
tiny preset, parity on a user's model file, and one-line errors (never a traceback) on bad input, for every
subcommand the parser has."""

from __future__ import annotations

import argparse
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
from llmdual.cli import parser
from llmdual.contract import backend, backends
from llmdual.core.tokenizer import MIN_VOCAB
from llmdual.serve.load import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser, from the ``llmdual`` parser itself (a new subcommand is covered where it lands)."""
    action = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def one_line_error(done: subprocess.CompletedProcess, command: str, code: int) -> str:
    """The single stderr line of a refused ``llmdual <command>``, after checking its exit status."""
    assert done.returncode == code, f"exit {done.returncode}, expected {code}:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"llmdual {command}: error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> Path:
    """A model file cut short, with no tokenizer beside it."""
    path = tmp_path_factory.mktemp("corrupt") / "corrupt.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return path


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
    (["train", "--out", "x.safetensors", "--set", "vocab_size=256"], "vocab_size 256 is too small"),
    (["evaluate", "{model}", "--engine", "onnx"], "evaluates an ONNX export (.onnx), got"),
    (["evaluate", "{corrupt}"], "corrupt.safetensors is not a readable"),
    (["evaluate", "{corrupt}", "--engine", "onnx"], "evaluates an ONNX export (.onnx), got"),
    (["export", "{model}", "out.bin", "--format", "zip"], "invalid choice"),
    (["serve", "{model}", "--engine", "tflite"], "invalid choice"),
    (["parity", "--checks", "nothing"], "unknown parity check group"),
])
def test_bad_input_is_one_line_error(trained, corrupt, tmp_path, args, needle):
    done = cli(*[a.format(model=trained, corrupt=corrupt) for a in args], check=False, cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert needle in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(("llmdual", "usage"))


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_subcommand_has_help(command):
    out = cli(command, "--help").stdout
    assert out.startswith("usage: llmdual " + command) and "--" in out


# The arguments each subcommand needs before the parser looks at anything else (none for the others).
REQUIRED = {"train": ["--out", "m.safetensors"], "generate": ["{corrupt}", "--ids", "1"], "evaluate": ["{corrupt}"],
            "export": ["{corrupt}", "out.onnx"], "serve": ["{corrupt}"]}
# Input each subcommand accepts from the parser but refuses at run time (status 1), and what the line names;
# the benchmark refuses its options before it runs anything, with its usage status 2.
REFUSED = {
    "compare": (["--engines", "nosuch"], 2, "unknown engine 'nosuch'"),
    "parity": (["--checks", "nothing"], 1, "unknown parity check group"),
    "train": (["--out", "m.safetensors", "--set", "nonsense=1"], 1, "unknown setting 'nonsense'"),
    "generate": (["{corrupt}", "--ids", "1"], 1, "corrupt.safetensors is not a readable"),
    "evaluate": (["{corrupt}"], 1, "corrupt.safetensors is not a readable"),
    "export": (["{corrupt}", "out.onnx"], 1, "corrupt.safetensors is not a readable"),
    "serve": (["{corrupt}", "--port", "0"], 1, "corrupt.safetensors is not a readable"),
}


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_subcommand_refuses_an_unknown_option_in_one_line(command, corrupt, tmp_path):
    args = [a.format(corrupt=corrupt) for a in REQUIRED.get(command, [])]
    line = one_line_error(cli(command, *args, "--no-such-option", check=False, cwd=tmp_path), command, 2)
    assert "--no-such-option" in line and "--help" in line


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_subcommand_refuses_bad_input_at_run_time_in_one_line(command, corrupt, tmp_path):
    assert command in REFUSED, f"add a case for llmdual {command} to REFUSED"
    args, code, needle = REFUSED[command]
    line = one_line_error(cli(command, *[a.format(corrupt=corrupt) for a in args], check=False, cwd=tmp_path),
                          command, code)
    assert needle in line


def test_train_checks_its_out_folder_before_training(tmp_path):
    done = cli("train", "--out", "no/such/dir/m.safetensors", "--set", "steps=2", check=False, cwd=tmp_path)
    line = one_line_error(done, "train", 2)  # no progress bar on stderr: training never started
    assert "--out" in line and "folder no/such/dir does not exist" in line and not list(tmp_path.iterdir())


def test_export_and_parity_check_their_outputs_before_running(corrupt, tmp_path):
    assert "folder no does not exist" in one_line_error(
        cli("export", str(corrupt), "no/m.onnx", check=False, cwd=tmp_path), "export", 2)
    for flag in ("--json", "--junit"):
        line = one_line_error(cli("parity", flag, "no/p.out", check=False, cwd=tmp_path), "parity", 2)
        assert flag in line and "folder no does not exist" in line


def test_debug_shows_the_traceback(corrupt):
    for args in (["--debug", "evaluate", str(corrupt)], ["evaluate", str(corrupt), "--debug"]):
        done = cli(*args, check=False)
        assert done.returncode == 1 and "Traceback" in done.stderr and "ValueError" in done.stderr, done.stderr


def test_an_unexpected_error_is_one_line_naming_its_type_and_debug(capsys):
    from llmdual.cli import _guard

    def bug():
        raise TypeError("unsupported operand")

    assert _guard("train", bug, debug=False) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected TypeError: unsupported operand" in err and "--debug" in err
    with pytest.raises(TypeError):
        _guard("train", bug, debug=True)


def test_train_raises_a_preset_vocabulary_to_the_tokenizer_minimum(tmp_path, capsys):
    from llmdual.cli.train import resolve

    def vocab(*sets: str) -> int:
        args = parser().parse_args(["train", "--out", str(tmp_path / "m.safetensors"), *sets])
        return resolve(args)["model"]["vocab_size"]

    assert llmdual.Config.preset("tiny").vocab_size < MIN_VOCAB  # else this test shows nothing
    assert vocab() == MIN_VOCAB and f"training with vocab_size={MIN_VOCAB}" in capsys.readouterr().err
    assert vocab("--set", "vocab_size=300") == 300 and capsys.readouterr().err == ""  # the user's choice stands


@pytest.mark.parametrize("command", sorted(set(subcommands()) - {"compare"}))  # compare's help is the benchmark's
def test_help_shows_each_default_once(command):
    sub = subcommands()[command]
    for action in sub._actions:
        formatter = sub._get_formatter()
        formatter.add_argument(action)
        entry = " ".join(formatter.format_help().split())
        assert "(default: None)" not in entry and "(default: False)" not in entry, entry
        assert entry.count("default") <= 1, entry
        if command != "serve" and action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            # serve's options are documented by the server's own module
            assert f"default: {action.default}" in entry, f"llmdual {command} --help hides a default: {entry}"


@pytest.mark.parametrize("name", backends("data-parallel"))
@pytest.mark.parametrize("degree", [0, -1, 1.5, True])
def test_data_parallel_scope_refuses_a_degree_below_one(name, degree):
    refused = pytest.raises(ValueError, match=r"^data_parallel must be an integer >= 1 \((ranks|replicas)\), got ")
    with refused, backend(name).data_parallel_scope(degree):
        pass


def test_compare_runs_the_benchmark_command_line():
    assert "--engines" in cli("compare", "--help").stdout


def test_console_script_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["llmdual"] == "llmdual.cli:main"
