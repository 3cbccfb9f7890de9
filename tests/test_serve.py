"""The generation server: batching that never changes greedy tokens, OpenAI-style errors, 429/504, streaming,
stop strings and graceful shutdown (a real uvicorn server on 127.0.0.1 in a thread)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn

import llmdual
from llmdual.serve import ServeOptions, create_app, load_engine
from llmdual.serve.batcher import Batcher, Job, run_batch
from llmdual.serve.load import LoadOptions, free_port, run_load
from llmdual.serve.output import Completion
from llmdual.serve.schema import ApiError


class Server:
    """uvicorn in a thread on a free port; ``stop()`` is uvicorn's graceful shutdown."""

    def __init__(self, app) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=int(self.url.rsplit(":", 1)[1]),
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(600):
            if self.server.started:
                return
            time.sleep(0.05)
        raise RuntimeError("the test server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the server did not shut down"


@pytest.fixture(scope="module")
def server(serve_files):
    path, tok_path, _, _ = serve_files
    s = Server(create_app(load_engine(path, "torch", tok_path), ServeOptions(max_wait_s=0.05)))
    yield s
    s.stop()


def _single(model, tok, ids, n, **kw):
    return llmdual.generate(model, ids, n, tokenizer=tok, **kw).tolist()


async def _post(client, url, body):
    r = await client.post(f"{url}/v1/completions", json=body)
    return r.status_code, r.json()


async def _stream(client, url, body):
    chunks = []
    async with client.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


def test_mixed_concurrent_requests_match_single_requests(server, serve_files):
    _, _, model, tok = serve_files
    rng = np.random.default_rng(1)
    bodies = [{"prompt": rng.integers(0, tok.vocab_size, int(rng.integers(1, 20))).tolist(),
               "max_tokens": int(rng.integers(1, 24)), "temperature": 0} for _ in range(10)]
    bodies += [{"prompt": [5, 6, 7], "max_tokens": 8, "temperature": 0.9, "top_k": 20, "seed": 3},
               {"prompt": "def add", "max_tokens": 6, "temperature": 0}]

    async def fire():
        async with httpx.AsyncClient(timeout=60) as c:
            plain = asyncio.gather(*(_post(c, server.url, b) for b in bodies))
            streamed = asyncio.gather(*(_stream(c, server.url, b) for b in bodies[:4]))
            return await plain, await streamed

    answers, streams = asyncio.run(fire())
    for body, (status, answer) in zip(bodies, answers):
        assert status == 200, answer
        ids = tok.encode(body["prompt"]) if isinstance(body["prompt"], str) else body["prompt"]
        kw = {k: body[k] for k in ("temperature", "top_k", "seed") if k in body}
        expected = _single(serve_files[2], tok, ids, body["max_tokens"], **kw)
        choice = answer["choices"][0]
        assert choice["token_ids"] == expected, body
        assert choice["text"] == tok.decode(expected)
        assert choice["finish_reason"] == ("length" if len(expected) == body["max_tokens"] else "stop")
        assert answer["usage"]["completion_tokens"] == len(expected)
    for body, chunks in zip(bodies, streams):
        assert [t for c in chunks for t in c["choices"][0]["token_ids"]] == _single(model, tok, body["prompt"],
                                                                                 body["max_tokens"])
        assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["batches"] >= 1


def test_batch_composition_never_changes_greedy_tokens(serve_files):
    path, tok_path, model, tok = serve_files
    engine = load_engine(path, "torch", tok_path)
    prompts = [[1], list(range(2, 40)), [7, 7, 7, 7], list(range(100, 110))]
    budgets = [20, 3, 12, 1]

    async def batch(order):
        jobs = [Job(prompts[i], Completion(budgets[i], tok.eot_id, tok, [])) for i in order]
        run_batch(engine, jobs)
        return {i: job.completion.tokens for i, job in zip(order, jobs)}

    together = asyncio.run(batch([0, 1, 2, 3]))
    reversed_ = asyncio.run(batch([3, 2, 1, 0]))
    for i in range(4):
        expected = _single(model, tok, prompts[i], budgets[i])
        assert together[i] == reversed_[i] == expected


def test_stop_strings_cut_the_text(server, serve_files):
    _, _, model, tok = serve_files
    full = tok.decode(_single(model, tok, [40, 41, 42], 24))
    k = next(i for i in range(1, len(full) - 1) if "\ufffd" not in full[i:i + 2])
    stop = full[k:k + 2]
    status, answer = asyncio.run(_client_post(server.url, {"prompt": [40, 41, 42], "max_tokens": 24,
                                                           "temperature": 0, "stop": [stop, "@@never@@"]}))
    assert status == 200
    assert answer["choices"][0]["text"] == full[: full.find(stop)]
    assert answer["choices"][0]["finish_reason"] == "stop"
    chunks = asyncio.run(_client_stream(server.url, {"prompt": [40, 41, 42], "max_tokens": 24, "temperature": 0,
                                                     "stop": stop}))
    assert "".join(c["choices"][0]["text"] for c in chunks) == full[: full.find(stop)]


async def _client_post(url, body):
    async with httpx.AsyncClient(timeout=60) as c:
        return await _post(c, url, body)


async def _client_stream(url, body):
    async with httpx.AsyncClient(timeout=60) as c:
        return await _stream(c, url, body)


BAD = [
    (b"{not json", "body"),
    (b'{"prompt": [1], "max_tokens": 4, "best_of": 2}', "best_of"),
    (b'{"prompt": [1], "max_tokens": -3}', "max_tokens"),
    (b'{"prompt": [1], "max_tokens": 2.5}', "max_tokens"),
    (b'{"prompt": [1, 300]}', "prompt"),
    (b'{"prompt": [-1]}', "prompt"),
    (b'{"prompt": []}', "prompt"),
    (b'{"prompt": ' + json.dumps(list(range(65))).encode() + b"}", "prompt"),
    (b'{"prompt": [1, 2], "max_tokens": 64}', "max_tokens"),
    (b'{"prompt": [1], "temperature": -1}', "temperature"),
    (b'{"prompt": [1], "top_p": 0}', "top_p"),
    (b'{"prompt": [1], "stop": [""]}', "stop"),
    (b'{"max_tokens": 3}', "prompt"),
    (b"[1, 2]", None),
]


@pytest.mark.parametrize("body,param", BAD)
def test_bad_requests_get_openai_errors(server, body, param):
    r = httpx.post(f"{server.url}/v1/completions", content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    if param == "body":
        assert "JSON" in error["message"]
    elif param is not None:
        assert error["param"] == param, error
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_models_endpoint(server):
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "m"
    status, answer = asyncio.run(_client_post(server.url, {"prompt": [1], "model": "other"}))
    assert status == 404 and answer["error"]["param"] == "model"


def test_full_queue_answers_429(serve_files):
    path, _, _, _ = serve_files
    engine = load_engine(path, "torch")

    async def submit_two():
        batcher = Batcher(engine, max_queue=1)
        batcher.submit(Job([1], Completion(2, None, None, [])))
        with pytest.raises(ApiError) as err:
            batcher.submit(Job([1], Completion(2, None, None, [])))
        batcher.pool.shutdown()
        return err.value

    err = asyncio.run(submit_two())
    assert err.status == 429 and err.body()["error"]["type"] == "rate_limit_error"


def test_timeout_answers_504_and_server_lives_on(serve_files):
    path, _, _, _ = serve_files
    s = Server(create_app(load_engine(path, "torch"), ServeOptions(timeout_s=0.0)))
    try:
        for stream in (False, True):
            r = httpx.post(f"{s.url}/v1/completions", json={"prompt": [1, 2], "max_tokens": 4, "stream": stream})
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert httpx.get(f"{s.url}/health").json()["status"] == "ok"
    finally:
        s.stop()


def test_graceful_shutdown_finishes_running_requests(serve_files):
    path, _, model, _ = serve_files
    s = Server(create_app(load_engine(path, "torch"), ServeOptions()))
    tokens: list[int] = []
    with httpx.stream("POST", f"{s.url}/v1/completions",
                      json={"prompt": [3], "max_tokens": 60, "temperature": 0, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                if not tokens:
                    threading.Thread(target=s.stop).start()  # shut down while the request is running
                tokens += json.loads(line[6:])["choices"][0]["token_ids"]
    assert tokens == llmdual.generate(model, [3], 60).tolist()
    s.thread.join(30)
    assert not s.thread.is_alive()


def test_a_bounded_load_run_answers_every_request(serve_files):
    """serve_load's driver against a real ``llmdual serve`` subprocess: 2 clients x 3 streamed requests, bounded."""
    path = serve_files[0]
    options = LoadOptions(clients=2, requests=3, max_tokens=4, time_limit_s=60.0)
    result = run_load(path, "torch", options)
    summary = result.summary()
    assert result.requests == 6 and result.errors == 0
    assert 6 <= result.tokens <= 6 * 4  # at least one token each, at most max_tokens (end-of-text may stop one)
    assert len(result.latencies_s) == len(result.ttft_s) == 6
    assert summary["req/s"] > 0 and summary["p50 ms"] <= summary["p99 ms"]
