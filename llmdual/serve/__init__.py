"""An OpenAI-compatible generation server over one llmdual engine (torch, keras or onnx), with micro-batching.

    llmdual serve model.safetensors --engine torch --tokenizer tokenizer.json --port 8000
    curl -s 127.0.0.1:8000/v1/completions -d '{"prompt": "def ", "max_tokens": 16, "temperature": 0}'

``POST /v1/completions`` takes ``prompt`` (text with a tokenizer, or token ids), ``max_tokens``, ``temperature``,
``top_p``, ``top_k``, ``seed``, ``stop`` and ``stream`` (server-sent events); answers carry ``token_ids`` too.
Greedy requests arriving within ``max_wait_s`` share one left-padded ``llmdual.generate`` call (tokens identical
to a request alone); a sampled request runs alone so its seed alone decides its tokens. A full queue answers
429, a request past ``timeout_s`` 504, a body over ``max_body_bytes`` 413, bad input 400 with
``{"error": {"message", "type", "param", "code"}}`` naming the field; 5xx only for the server's own faults.
Parsing and tokenising run in worker threads, so one huge prompt never stalls the other clients.
``--engine onnx`` serves a KV-cache ``.onnx`` export, or exports the model file to one at start-up.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from llmdual.serve.app import ServeOptions, create_app
from llmdual.serve.engine import Engine, load_engine


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``; ``OSError`` naming the address if it is taken or invalid."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as err:
        raise OSError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def serve(checkpoint: str | Path, engine: str = "torch", host: str = "127.0.0.1", port: int = 8000,
          tokenizer: str | Path | None = None, options: ServeOptions | None = None,
          log_level: str = "warning") -> None:
    """Load the engine and serve until SIGINT/SIGTERM; requests already running complete first. The address is
    taken before the model loads, so a port in use fails at once."""
    import uvicorn

    options = options or ServeOptions()
    sock = listen(host, port)
    try:
        loaded = load_engine(checkpoint, engine, tokenizer)
        address = sock.getsockname()
        print(f"llmdual serve: http://{host}:{address[1]} engine {loaded.name}, model {loaded.model_id} "
              f"({checkpoint}), tokenizer {tokenizer or 'none (token ids only)'}", file=sys.stderr, flush=True)
        config = uvicorn.Config(create_app(loaded, options), log_level=log_level,
                                timeout_graceful_shutdown=int(options.timeout_s) + 5)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


__all__ = ["Engine", "ServeOptions", "create_app", "listen", "load_engine", "serve"]
