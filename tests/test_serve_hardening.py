"""The server under hostile or careless clients: a huge prompt never stalls the others, every client error is a
4xx naming its field (never a 500, the connection kept), a tokenizer must fit its model, ``llmdual serve`` fails
in one line, and random request bodies never make the server fail."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from test_serve import Server

import llmdual
from llmdual.cli import main as cli_main
from llmdual.serve import ServeOptions, create_app, load_engine
from llmdual.serve.load import ServerProcess

BOUND_S = 2.0  # /health and a 2-token request: milliseconds when idle; the old server took 3.5 s to 53 s
JSON_TYPE = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def server(serve_files):
    s = Server(create_app(load_engine(serve_files[0], "torch", serve_files[1]), ServeOptions(max_wait_s=0.0)))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(serve_files):
    with TestClient(create_app(load_engine(serve_files[0], "torch", serve_files[1]), ServeOptions(max_wait_s=0.0))) as c:
        yield c


# A huge prompt in flight


@pytest.mark.parametrize("mb,limit_lifted", [(3, False), (1, True)], ids=["refused-before-tokenising",
                                                                         "tokenised-off-the-loop"])
def test_health_and_small_requests_answer_within_bound_while_a_huge_prompt_is_in_flight(serve_files, mb, limit_lifted):
    """3 MB of text (under the 4 MB body limit) is refused by its length alone; with that check lifted, 1 MB is
    tokenised (seconds) in a worker thread. Either way other clients wait less than ``BOUND_S``."""
    engine = load_engine(serve_files[0], "torch", serve_files[1])
    if limit_lifted:
        engine.max_prompt_chars = 10**9
    s = Server(create_app(engine, ServeOptions(max_wait_s=0.0)))
    huge = json.dumps({"prompt": "def f(x):\n    return x\n" * (mb * 2**20 // 24), "max_tokens": 2})
    answer: dict = {}
    sender = threading.Thread(target=lambda: answer.update(r=httpx.post(f"{s.url}/v1/completions", content=huge,
                                                                        headers=JSON_TYPE, timeout=300)))
    waits: list[float] = []
    try:
        sender.start()
        time.sleep(0.05)  # the upload has begun
        while sender.is_alive() or len(waits) < 3:
            start = time.perf_counter()
            assert httpx.get(f"{s.url}/health", timeout=BOUND_S).status_code == 200
            small = httpx.post(f"{s.url}/v1/completions", json={"prompt": [1, 2], "max_tokens": 2, "temperature": 0},
                               timeout=BOUND_S)
            assert small.status_code == 200 and len(small.json()["choices"][0]["token_ids"]) <= 2
            waits.append(time.perf_counter() - start)
        sender.join()
    finally:
        s.stop()
    assert max(waits) < BOUND_S, waits
    assert answer["r"].status_code == 400
    assert answer["r"].json()["error"]["code"] == "context_length_exceeded"
    assert answer["r"].json()["error"]["param"] == "prompt"


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_is_answered_413(server, chunked):
    body = b'{"prompt": [' + b"1, " * (20 * 2**20 // 3) + b'1]}'  # 20 MB of ids, over the default 4 MB
    content = (body[i:i + 2**20] for i in range(0, len(body), 2**20)) if chunked else body
    r = httpx.post(f"{server.url}/v1/completions", content=content, headers=JSON_TYPE, timeout=60)
    assert r.status_code == 413, r.text[:200]
    assert r.json()["error"]["code"] == "request_too_large" and "4 MB" in r.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health", timeout=BOUND_S).status_code == 200
    ok = httpx.post(f"{server.url}/v1/completions", json={"prompt": [1], "max_tokens": 1}, timeout=30)
    assert ok.status_code == 200


# Client errors are 4xx naming the field


CLIENT_ERRORS = [
    (b'{"prompt": [1], "seed": -1}', "seed", "greater than or equal to 0"),
    (b'{"prompt": "def \\ud800 f"}', "prompt", "surrogate"),
    (b'{"prompt": [1], "stop": "\\udc00"}', "stop", "surrogate"),
    (b'{"prompt": [1.5]}', "prompt", "integers"),
    (b'{"prompt": [1, true]}', "prompt", "item 1 is true"),
    (b'{"prompt": ["def", "class"]}', "prompt", "batch"),
    (b'{"prompt": [[1, 2], [3]]}', "prompt", "batch"),
    (b'{"prompt": {"text": "x"}}', "prompt", "string or a list of integer token ids"),
    (b'{"prompt": [1], "stop": [1]}', "stop", "strings"),
    (b'{"prompt": [1], "stop": ["a", "b", "c", "d", "e"]}', "stop", "up to 4"),
    (b'{"prompt": [1], "temperature": "0.5"}', "temperature", "number"),
    (b'{"prompt": [1], "temperature": true}', "temperature", "number"),
    (b'{"prompt": [1], "top_p": NaN}', "top_p", "finite"),
    (b'{"prompt": [1], "max_tokens": 1e3}', "max_tokens", "integer"),
]


@pytest.mark.parametrize("body,param,words", CLIENT_ERRORS)
def test_client_errors_are_400_naming_the_field(client, body, param, words):
    r = client.post("/v1/completions", content=body, headers=JSON_TYPE)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param in error["message"] and words in error["message"], error["message"]


def test_the_connection_stays_usable_after_a_client_error(server):
    """A bad request then a good one on one keep-alive connection (the same local port both times)."""
    with httpx.Client(base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=1)) as c:
        bad = c.post("/v1/completions", content=b'{"prompt": "\\ud800"}', headers=JSON_TYPE)
        good = c.post("/v1/completions", json={"prompt": [1, 2], "max_tokens": 2})
        assert bad.status_code == 400 and good.status_code == 200
        assert bad.headers.get("connection", "") != "close"
        ports = [r.extensions["network_stream"].get_extra_info("client_addr") for r in (bad, good)]
        assert ports[0] == ports[1]


# A tokenizer must fit its model


def _shifted(tok: llmdual.Tokenizer, shift: int, path) -> llmdual.Tokenizer:
    """``tok`` with every id moved up by ``shift``: the same number of ids, none of them the model's."""
    spec = json.loads(tok.to_json())
    spec["model"]["vocab"] = {t: i + shift for t, i in spec["model"]["vocab"].items()}
    for added in spec["added_tokens"]:
        added["id"] += shift
    path.write_text(json.dumps(spec))
    return llmdual.Tokenizer.load(path)


@pytest.mark.parametrize("case", ["ids-shifted", "model-vocab-larger", "model-vocab-smaller"])
def test_a_tokenizer_that_does_not_fit_its_model_is_refused(serve_files, tmp_path, case):
    _, tok_path, _, tok = serve_files
    n = tok.vocab_size
    if case == "ids-shifted":
        tok_path = tmp_path / "tokenizer.json"
        tok = _shifted(tok, 100, tok_path)
        assert tok.vocab_size == n  # the count alone cannot tell
    vocab = {"ids-shifted": n, "model-vocab-larger": n + 5, "model-vocab-smaller": n - 5}[case]
    model = llmdual.build(llmdual.Config.preset("tiny", vocab_size=vocab), "torch", seed=0)
    path = llmdual.save(model, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=rf"{n} ids.*vocab_size {vocab}"):
        load_engine(path, "torch", tok_path)
    with pytest.raises(ValueError, match=rf"{n} ids.*vocab_size {vocab}"):
        llmdual.generate(model, [1, 2], 4, tokenizer=tok)


# llmdual serve fails in one line


def test_serve_with_a_bad_port_fails_in_one_line(serve_files, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["serve", str(serve_files[0]), "--port", "99999"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and "--port" in err and "99999" in err and "Traceback" not in err


def test_serve_on_a_port_in_use_fails_in_one_line(serve_files, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli_main(["serve", str(serve_files[0]), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and f"127.0.0.1:{port}" in err and "Traceback" not in err


def test_serve_logs_one_start_up_line(serve_files):
    path, tok_path, _, _ = serve_files
    with ServerProcess(path, "torch", tok_path) as s:
        assert httpx.get(f"{s.url}/health").status_code == 200
    lines = s.proc.stdout.read().splitlines()
    start = [line for line in lines if line.startswith("llmdual serve:")]
    assert len(start) == 1, lines
    assert s.url in start[0] and "engine torch" in start[0] and "model m" in start[0]


# Random bodies never make the server fail

SURROGATE_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | SURROGATE_TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(SURROGATE_TEXT, inner, max_size=3),
                    max_leaves=8)
VALUES = {
    "prompt": st.one_of(SURROGATE_TEXT, st.lists(st.integers(-5, 400), max_size=70), JSON),
    "model": st.one_of(st.just("m"), JSON),
    "max_tokens": st.one_of(st.integers(-2, 70), JSON),
    "temperature": st.one_of(st.floats(-1, 3), JSON),
    "top_p": st.one_of(st.floats(-0.5, 1.5), JSON),
    "top_k": st.one_of(st.integers(-1, 2**65), JSON),
    "seed": st.one_of(st.integers(-2**64, 2**70), JSON),
    "stop": st.one_of(SURROGATE_TEXT, st.lists(SURROGATE_TEXT, max_size=6), JSON),
    "stream": st.one_of(st.booleans(), JSON),
}
BODIES = st.fixed_dictionaries({}, optional={**VALUES, "best_of": JSON, "x": JSON})


@settings(max_examples=50, deadline=None)
@given(body=BODIES)
def test_random_bodies_get_2xx_or_a_4xx_naming_a_field(client, body):
    content = json.dumps(body).encode()  # ensure_ascii: a surrogate goes as the escape \ud800
    r = client.post("/v1/completions", content=content, headers=JSON_TYPE)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["message"] and error["param"] in set(body) | {"prompt"}, (error, body)
    elif body.get("stream") is True:
        assert r.text.rstrip().endswith("data: [DONE]")
    else:
        assert len(r.json()["choices"][0]["token_ids"]) <= body.get("max_tokens", 16)


@settings(max_examples=50, deadline=None)
@given(body=st.one_of(st.binary(max_size=64), JSON.map(lambda v: json.dumps(v).encode())))
def test_random_non_request_bodies_get_400(client, body):
    r = client.post("/v1/completions", content=body, headers=JSON_TYPE)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["message"]
