"""The FastAPI application: ``POST /v1/completions`` (OpenAI-compatible, streaming as server-sent events),
``GET /v1/models`` and ``GET /health``, with OpenAI-style JSON errors for every refused request."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from llmdual.serve.admit import admit
from llmdual.serve.batcher import Batcher, Job, random_seed
from llmdual.serve.engine import Engine
from llmdual.serve.limits import BodyLimit, ErrorResponse
from llmdual.serve.output import Completion
from llmdual.serve.schema import ApiError, CompletionRequest, error_body


@dataclass(frozen=True)
class ServeOptions:
    """Batching and admission settings."""

    max_batch: int = 8
    max_wait_s: float = 0.01
    max_queue: int = 64
    timeout_s: float = 60.0
    max_body_bytes: int = 4 * 2**20  # room for a context's worth of text or ids; beyond it, 413 unparsed

    def __post_init__(self) -> None:
        if (self.max_batch < 1 or self.max_queue < 1 or self.max_wait_s < 0 or self.timeout_s < 0
                or self.max_body_bytes < 1):
            raise ValueError(f"invalid serve options {self}: max_batch, max_queue and max_body_bytes must be >= 1, "
                             f"max_wait_s and timeout_s >= 0")


async def _events(job: Job, timeout_s: float) -> AsyncIterator[tuple]:
    """The job's events until ``done``; ``ApiError`` 504 past the deadline, 500 on an engine error."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                event = await asyncio.wait_for(job.events.get(), max(left, 0.0))
            except asyncio.TimeoutError:
                raise ApiError(504, f"the request did not finish within {timeout_s:g} s", None, "timeout",
                               "timeout_error") from None
            if event[0] == "error":
                raise ApiError(500, f"generation failed: {event[1]}", None, "engine_error", "server_error")
            yield event
            if event[0] == "done":
                return
    finally:
        job.cancelled = job.cancelled or not job.completion.done


def _choice(text: str, ids: list[int], finish: str | None) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish, "token_ids": ids}


def create_app(engine: Engine, options: ServeOptions = ServeOptions()) -> FastAPI:
    """The server for ``engine``; batching starts with the app's lifespan and drains on shutdown."""
    batcher: Batcher | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal batcher
        batcher = Batcher(engine, options.max_batch, options.max_wait_s, options.max_queue)
        await run_in_threadpool(lambda: engine.max_prompt_chars)  # computed once, before the first request
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="llmdual", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)
    app.add_exception_handler(ApiError, lambda r, e: ErrorResponse(e.body(), status_code=e.status))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> ErrorResponse:
        return ErrorResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"), 500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "engine": engine.name, "model": engine.model_id,
                "queued": batcher.queue.qsize(), "batches": batcher.batches, "largest_batch": batcher.largest_batch}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": engine.model_id, "object": "model", "created": 0, "owned_by": "llmdual",
            "engine": engine.name, "max_seq_len": engine.config.max_seq_len, "vocab_size": engine.config.vocab_size,
        }]}

    body_schema = {"content": {"application/json": {"schema": CompletionRequest.model_json_schema()}},
                   "required": True}

    @app.post("/v1/completions", openapi_extra={"requestBody": body_schema})
    async def completions(request: Request):
        req, ids = await run_in_threadpool(admit, await request.body(), engine)
        seed = random_seed() if req.seed is None else req.seed
        job = Job(ids, Completion(req.max_tokens, engine.eot_id, engine.tokenizer, req.stops()),
                  req.temperature, req.top_k, req.top_p, seed)
        batcher.submit(job)
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": engine.model_id}
        events = _events(job, options.timeout_s)
        if not req.stream:
            text, out, finish = "", [], None
            async for event in events:
                if event[0] == "delta":
                    out, text = out + event[1], text + event[2]
                else:
                    finish = event[1]
            usage = {"prompt_tokens": len(ids), "completion_tokens": len(out), "total_tokens": len(ids) + len(out)}
            return {**head, "choices": [_choice(text, out, finish)], "usage": usage}
        first = await anext(events)  # errors before the first token still get their status code

        async def sse() -> AsyncIterator[str]:
            try:
                event = first
                while True:
                    ids_, text, finish = (event[1], event[2], None) if event[0] == "delta" else ([], "", event[1])
                    yield f"data: {json.dumps({**head, 'choices': [_choice(text, ids_, finish)]})}\n\n"
                    if finish is not None:
                        break
                    event = await anext(events)
            except ApiError as exc:
                yield f"data: {json.dumps(exc.body())}\n\n"
            finally:
                await events.aclose()
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    return app
