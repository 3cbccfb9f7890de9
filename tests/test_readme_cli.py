"""README's "Command line and server" examples run as written, in order, in a fresh folder: each line of its bash
block must exit 0 (``llmdual serve``, which runs until stopped, must answer ``/health``, then stop on SIGTERM)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Command line and server"
SERVE_STARTUP_S = 120  # loading the model and starting uvicorn; generous for a busy 2-core CI machine


def readme_commands() -> list[list[str]]:
    """The ``llmdual`` command lines of the section's bash block, split as the shell would (comments dropped)."""
    section = README.read_text().split(SECTION + "\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, f"README's {SECTION!r} has no bash block"
    return [words for line in block.group(1).splitlines() if (words := shlex.split(line, comments=True))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_answers_health(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Start the server line on a free port (the README's may be taken), wait for ``/health``, stop it."""
    args = list(argv)
    if "--port" in args:
        args[args.index("--port") + 1] = str(free_port())
    else:
        args += ["--port", str(free_port())]
    port = args[args.index("--port") + 1]
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + SERVE_STARTUP_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{shlex.join(argv)} exited with {proc.returncode}:\n{proc.stdout.read()}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            raise AssertionError(f"{shlex.join(argv)}: no /health answer within {SERVE_STARTUP_S} s")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once it has shut down
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_readme_bash_block_lists_every_line_as_an_llmdual_command():
    commands = readme_commands()
    assert len(commands) >= 5 and all(words[0] == "llmdual" for words in commands), commands


def test_readme_command_lines_run_as_written(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for words in readme_commands():
        argv = [sys.executable, "-m", "llmdual.cli", *words[1:]]  # the console script's entry point
        if words[1] == "serve":
            serve_answers_health(argv, tmp_path, env)
            continue
        done = subprocess.run(argv, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"README line failed: {shlex.join(words)}\n{done.stdout[-2000:]}\n" \
                                     f"{done.stderr[-2000:]}"
