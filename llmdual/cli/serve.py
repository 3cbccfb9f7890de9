"""``llmdual serve``: the OpenAI-compatible generation server (``llmdual.serve``) on 127.0.0.1."""

from __future__ import annotations

import argparse

from llmdual.cli.common import existing_file, tokenizer_path
from llmdual.contract import targets


def run(args: argparse.Namespace) -> int:
    from llmdual.serve import ServeOptions, serve

    options = ServeOptions(args.max_batch, args.max_wait_ms / 1e3, args.max_queue, args.timeout,
                           int(args.max_body_mb * 2**20))
    serve(args.checkpoint, args.engine, args.host, args.port, tokenizer_path(args.checkpoint, args.tokenizer),
          options, args.log_level)
    return 0


def port(text: str) -> int:
    """An argparse type: a TCP port, 0..65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..65535 (0: any free port), got {text!r}")
    return value


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve /v1/completions (OpenAI-compatible) over one engine",
                       description="An OpenAI-compatible completion server with micro-batching. SIGINT/SIGTERM "
                       "finish running requests, then exit.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.error = lambda message: p.exit(2, f"{p.prog}: error: {message} (see --help)\n")  # one line, no usage block
    p.add_argument("checkpoint", type=existing_file, help="model file; for --engine onnx also a KV-cache .onnx")
    p.add_argument("--engine", "--backend", dest="engine", choices=targets("decoding"), default="torch",
                   help="the backend that generates, or the runtime of an export")
    p.add_argument("--tokenizer", type=existing_file,
                   help="tokenizer.json for text prompts (default: <stem>.tokenizer.json if present; else ids only); "
                        "it must have exactly the model's vocab_size ids")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=8000, help="TCP port, 0..65535 (0: any free port)")
    p.add_argument("--max-batch", type=int, default=8, help="requests per batch")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits to fill")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request before 504")
    p.add_argument("--max-body-mb", type=float, default=4.0,
                   help="largest request body in MiB; a larger one is answered 413 without being parsed")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)
