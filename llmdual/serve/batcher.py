"""Static micro-batching: requests wait a few milliseconds in a bounded queue, compatible ones (greedy, fitting
the context together) run as one left-padded ``llmdual.generate`` call on a single model thread, and every
generated token is streamed back to its request as it is sampled."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from llmdual.generate import decoder_for, generate
from llmdual.serve.engine import Engine
from llmdual.serve.output import Completion
from llmdual.serve.schema import ApiError

_ids = itertools.count()


@dataclass
class Job:
    """One request in flight: its prompt ids, sampling settings, completion state and event queue."""

    ids: list[int]
    completion: Completion
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    cancelled: bool = False
    number: int = field(default_factory=lambda: next(_ids))

    @property
    def finished(self) -> bool:
        return self.cancelled or self.completion.done

    def key(self) -> tuple:
        """Jobs with equal keys may share a batch: greedy ones; a sampled one runs alone so its seed alone
        decides its tokens."""
        return ("greedy",) if self.temperature == 0 else ("sample", self.number)

    def send(self, event: tuple) -> None:
        """Deliver an event to the waiting request (from any thread)."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def publish(self) -> None:
        """Send the new tokens and text, then ``done`` once finished."""
        ids, text = self.completion.delta()
        if ids or text:
            self.send(("delta", ids, text))
        if self.completion.done:
            self.send(("done", self.completion.finish_reason))


class _AllFinished(Exception):
    """Every job of a batch is finished: stop decoding early."""


class TapDecoder:
    """A ``Decoder`` around the engine's that reports each sampled token (``generate`` feeds it to ``step``)."""

    def __init__(self, inner: object, on_tokens: Callable[[np.ndarray], bool]) -> None:
        self.inner, self.on_tokens = inner, on_tokens
        self.max_seq_len = inner.max_seq_len

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                max_len: int | None = None) -> tuple[np.ndarray, object]:
        return self.inner.prefill(input_ids, attention_mask, max_len)

    def step(self, next_ids: np.ndarray, attention_mask: np.ndarray, state: object) -> tuple[np.ndarray, object]:
        if self.on_tokens(next_ids[:, 0]):
            raise _AllFinished
        return self.inner.step(next_ids, attention_mask, state)


def group(jobs: list[Job], max_seq_len: int) -> list[list[Job]]:
    """Batches of jobs with equal keys whose left-padded prompts plus the longest budget fit the context."""
    groups: list[list[Job]] = []
    for job in jobs:
        for g in groups:
            width = max(len(j.ids) for j in g + [job])
            new = max(j.completion.max_tokens for j in g + [job])
            if g[0].key() == job.key() and width + new - 1 <= max_seq_len:
                g.append(job)
                break
        else:
            groups.append([job])
    return groups


def run_batch(engine: Engine, jobs: list[Job]) -> None:
    """Generate for ``jobs`` in one ``llmdual.generate`` call, publishing tokens as they are sampled."""

    def on_tokens(tokens: np.ndarray) -> bool:
        for job, token in zip(jobs, tokens):
            if not job.finished:
                job.completion.feed(int(token))
                job.publish()
        return all(job.finished for job in jobs)

    first = jobs[0]
    decoder = TapDecoder(decoder_for(engine.target), on_tokens)
    try:
        rows = generate(decoder, [j.ids for j in jobs], max(j.completion.max_tokens for j in jobs),
                        temperature=first.temperature, top_k=first.top_k, top_p=first.top_p, seed=first.seed,
                        eot_id=engine.eot_id)
    except _AllFinished:
        return
    for job, row in zip(jobs, rows):
        if job.finished:
            continue
        for token in row[len(job.completion.tokens):]:
            job.completion.feed(int(token))
        job.completion.finish("stop" if len(row) < job.completion.max_tokens else "length")
        job.publish()


class Batcher:
    """The request queue (``max_queue`` waiting jobs, then 429) and the loop that batches and runs them."""

    def __init__(self, engine: Engine, max_batch: int = 8, max_wait_s: float = 0.01, max_queue: int = 64) -> None:
        self.engine, self.max_batch, self.max_wait_s = engine, max_batch, max_wait_s
        self.queue: asyncio.Queue[Job] = asyncio.Queue(max_queue)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="llmdual-model")
        self.closing = False
        self.running = 0
        self.batches = 0
        self.largest_batch = 0
        self._task: asyncio.Task | None = None

    def warmup(self) -> None:
        """One short greedy generation, so the first request does not pay for compilation."""
        generate(self.engine.target, [[0]], 2)

    async def start(self) -> None:
        """Warm up the engine and start the batching loop."""
        await asyncio.get_running_loop().run_in_executor(self.pool, self.warmup)
        self._task = asyncio.create_task(self._loop())

    def submit(self, job: Job) -> None:
        """Queue ``job``; ``ApiError`` 503 while shutting down, 429 when the queue is full."""
        if self.closing:
            raise ApiError(503, "the server is shutting down", kind="server_error", code="shutting_down")
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise ApiError(429, f"too many requests waiting (queue of {self.queue.maxsize} is full); retry later",
                           kind="rate_limit_error", code="queue_full") from None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            await asyncio.sleep(self.max_wait_s)
            while len(jobs) < self.max_batch and not self.queue.empty():
                jobs.append(self.queue.get_nowait())
            self.running = len(jobs)
            for batch in group([j for j in jobs if not j.cancelled], self.engine.config.max_seq_len):
                self.batches, self.largest_batch = self.batches + 1, max(self.largest_batch, len(batch))
                try:
                    await loop.run_in_executor(self.pool, run_batch, self.engine, batch)
                except Exception as exc:  # noqa: BLE001 -- a failed batch fails its requests, never the server
                    for job in batch:
                        job.send(("error", f"{type(exc).__name__}: {exc}"))
            self.running = 0

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new jobs, let queued and running ones finish (up to ``timeout_s``), then stop the loop."""
        self.closing = True
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (self.running or not self.queue.empty()) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
        self.pool.shutdown(wait=True)


def random_seed() -> int:
    """A seed for a sampled request that did not pass one."""
    return random.randrange(2**31)
