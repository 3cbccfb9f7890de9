"""A bounded load test: start ``llmdual serve`` in a subprocess on a free 127.0.0.1 port, drive it with
N concurrent streaming clients x M requests under a time limit, and summarise throughput and latency. ``/health``
is probed throughout, and one huge text prompt can be sent among the clients to show it stalls nobody."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np


@dataclass(frozen=True)
class LoadOptions:
    """How much load: ``clients`` concurrent clients each sending up to ``requests`` requests, all stopping
    at ``time_limit_s``."""

    clients: int = 4
    requests: int = 5
    max_tokens: int = 16
    prompt_len: tuple[int, int] = (4, 16)
    time_limit_s: float = 60.0
    startup_timeout_s: float = 120.0
    seed: int = 0
    huge_prompt_mb: float = 0.0  # > 0: one more request with a text prompt of this size, sent as the clients start
    health_every_s: float = 0.05


@dataclass
class LoadResult:
    """What one engine did under the load."""

    engine: str
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    error_messages: list[str] = field(default_factory=list)
    health_s: list[float] = field(default_factory=list)
    health_failures: int = 0
    huge: str = ""

    def summary(self) -> dict[str, float | int | str]:
        """Requests/s, tokens/s, latency p50/p90/p99, median time to first token and /health latency p99 and
        max (milliseconds), with the huge prompt's answer when one was sent."""
        pct = (lambda xs, q: float(np.percentile(xs, q)) * 1e3 if xs else float("nan"))
        wall = max(self.wall_s, 1e-9)
        return {"engine": self.engine, "requests": self.requests, "errors": self.errors,
                "req/s": self.requests / wall, "tok/s": self.tokens / wall,
                "p50 ms": pct(self.latencies_s, 50), "p90 ms": pct(self.latencies_s, 90),
                "p99 ms": pct(self.latencies_s, 99), "ttft p50 ms": pct(self.ttft_s, 50),
                "health n": len(self.health_s), "health fails": self.health_failures,
                "health p99 ms": pct(self.health_s, 99), "health max ms": pct(self.health_s, 100),
                **({"huge prompt": self.huge} if self.huge else {})}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``llmdual serve`` as a subprocess on 127.0.0.1; a context manager that waits for /health and, on exit,
    stops it with SIGTERM (graceful), then SIGKILL if it lingers."""

    def __init__(self, checkpoint: str | Path, engine: str, tokenizer: str | Path | None = None,
                 extra: list[str] | None = None, startup_timeout_s: float = 120.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "llmdual.cli", "serve", str(checkpoint), "--engine", engine,
                    "--host", "127.0.0.1", "--port", str(self.port), *(["--tokenizer", str(tokenizer)] if tokenizer else []),
                    *(extra or [])]
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.proc.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the server did not answer /health within {self.startup_timeout_s:g} s")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return -1 if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def stream_completion(client: httpx.AsyncClient, url: str, body: dict) -> tuple[list[int], float, float]:
    """One streaming completion: (token ids, seconds to the first token, total seconds); raises on an error."""
    start = time.perf_counter()
    ttft, ids = float("nan"), []
    async with client.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread()).decode()[:200]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            new = chunk["choices"][0]["token_ids"]
            if new and not ids:
                ttft = time.perf_counter() - start
            ids += new
    return ids, ttft, time.perf_counter() - start


async def drive(url: str, engine: str, vocab_size: int, options: LoadOptions) -> LoadResult:
    """Run the clients against ``url`` until each sent its requests or the time limit passed."""
    result = LoadResult(engine)
    rng = np.random.default_rng(options.seed)
    deadline = time.perf_counter() + options.time_limit_s

    async def client(c: httpx.AsyncClient, prompts: list[list[int]]) -> None:
        for prompt in prompts:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            body = {"prompt": prompt, "max_tokens": options.max_tokens, "temperature": 0}
            try:
                ids, ttft, total = await asyncio.wait_for(stream_completion(c, url, body), left)
                result.requests += 1
                result.tokens += len(ids)
                result.latencies_s.append(total)
                result.ttft_s.append(ttft)
            except (Exception, asyncio.TimeoutError) as exc:  # noqa: BLE001 -- counted as errors
                result.errors += 1
                result.error_messages.append(f"{type(exc).__name__}: {exc}"[:200])

    async def health(c: httpx.AsyncClient, clients_done: asyncio.Event) -> None:
        while not clients_done.is_set():
            start = time.perf_counter()
            try:
                ok = (await c.get(f"{url}/health", timeout=options.time_limit_s)).status_code == 200
            except httpx.HTTPError:
                ok = False
            result.health_s.append(time.perf_counter() - start)
            result.health_failures += not ok
            await asyncio.sleep(options.health_every_s)

    async def huge(c: httpx.AsyncClient) -> None:
        text = "def f(x):\n    return x\n" * int(options.huge_prompt_mb * 2**20 / 24)
        start = time.perf_counter()
        try:
            r = await c.post(f"{url}/v1/completions", json={"prompt": text, "max_tokens": 2},
                             timeout=options.time_limit_s)
            answer = f"HTTP {r.status_code} {r.json().get('error', {}).get('code', '')}".strip()
        except (httpx.HTTPError, ValueError) as exc:
            answer = type(exc).__name__
        result.huge = f"{options.huge_prompt_mb:g} MB: {answer} in {time.perf_counter() - start:.2f} s"

    low, high = options.prompt_len
    work = [[rng.integers(0, vocab_size, rng.integers(low, high + 1)).tolist() for _ in range(options.requests)]
            for _ in range(options.clients)]
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=options.time_limit_s) as c, httpx.AsyncClient() as probe:
        clients_done = asyncio.Event()
        prober = asyncio.create_task(health(probe, clients_done))
        extra = [huge(c)] if options.huge_prompt_mb > 0 else []
        await asyncio.gather(*(client(c, prompts) for prompts in work), *extra)
        result.wall_s = time.perf_counter() - start
        clients_done.set()
        await prober
    return result


def run_load(checkpoint: str | Path, engine: str, options: LoadOptions = LoadOptions(),
             tokenizer: str | Path | None = None) -> LoadResult:
    """Start a server for ``engine`` on ``checkpoint`` (and ``tokenizer``), load it, stop it; the result."""
    with ServerProcess(checkpoint, engine, tokenizer, startup_timeout_s=options.startup_timeout_s) as server:
        vocab = httpx.get(f"{server.url}/v1/models").json()["data"][0]["vocab_size"]
        return asyncio.run(drive(server.url, engine, vocab, options))


def table(results: list[LoadResult]) -> str:
    """A markdown table, one row per engine."""
    rows = [r.summary() for r in results]
    headers = list(rows[0])
    fmt = (lambda v: f"{v:.1f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(row[h]) for h in headers) + " |" for row in rows]
    return "\n".join(lines)


def to_json(results: list[LoadResult]) -> str:
    """Every result, raw latencies included."""
    return json.dumps([asdict(r) | {"summary": r.summary()} for r in results], indent=2)
