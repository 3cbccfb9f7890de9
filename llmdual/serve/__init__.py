"""An OpenAI-compatible generation server over one llmdual engine (torch, keras or onnx), with micro-batching.

    llmdual serve model.safetensors --engine torch --tokenizer tokenizer.json --port 8000
    curl -s 127.0.0.1:8000/v1/completions -d '{"prompt": "def ", "max_tokens": 16, "temperature": 0}'

``POST /v1/completions`` takes ``prompt`` (text with a tokenizer, or token ids), ``max_tokens``, ``temperature``,
``top_p``, ``top_k``, ``seed``, ``stop`` and ``stream`` (server-sent events); answers carry ``token_ids`` too.
Greedy requests arriving within ``max_wait_s`` share one left-padded ``llmdual.generate`` call (tokens identical
to a request alone); a sampled request runs alone so its seed alone decides its tokens. A full queue answers
429, a request past ``timeout_s`` 504, bad input 400 with ``{"error": {"message", "type", "param", "code"}}``.
``--engine onnx`` serves a KV-cache ``.onnx`` export, or exports the model file to one at start-up.
"""

from __future__ import annotations

from pathlib import Path

from llmdual.serve.app import ServeOptions, create_app
from llmdual.serve.engine import Engine, load_engine


def serve(checkpoint: str | Path, engine: str = "torch", host: str = "127.0.0.1", port: int = 8000,
          tokenizer: str | Path | None = None, options: ServeOptions | None = None,
          log_level: str = "warning") -> None:
    """Load the engine and serve until SIGINT/SIGTERM; requests already running complete first."""
    import uvicorn

    options = options or ServeOptions()
    app = create_app(load_engine(checkpoint, engine, tokenizer), options)
    uvicorn.run(app, host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=int(options.timeout_s) + 5)


__all__ = ["Engine", "ServeOptions", "create_app", "load_engine", "serve"]
