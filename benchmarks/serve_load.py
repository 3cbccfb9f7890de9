"""Load-test ``llmdual serve`` per engine: N streaming clients x M greedy requests against a server started on
127.0.0.1 (a subprocess on a free port), bounded in count and time. Prints requests/s, tokens/s, latency
p50/p90/p99, time to first token, /health latency (probed throughout) and errors per engine; the logic lives
in ``llmdual.serve.load``. ``--huge-prompt-mb 20`` also sends one 20 MB text prompt as the clients start.

    python benchmarks/serve_load.py
    python benchmarks/serve_load.py --huge-prompt-mb 20
    python benchmarks/serve_load.py --engines torch --clients 8 --requests 10 --max-tokens 32 --preset small
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import llmdual
from llmdual.core.tokenizer import MIN_VOCAB
from llmdual.serve.load import LoadOptions, run_load, table, to_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="model file to serve (default: a fresh --preset model)")
    p.add_argument("--tokenizer", type=Path, help="its tokenizer.json (default: none for --checkpoint, else a fresh "
                   "one trained on llmdual's own sources)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--engines", default="torch,keras,onnx")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=8, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per engine, then the clients stop")
    p.add_argument("--huge-prompt-mb", type=float, default=0.0,
                   help="also send one text prompt of this many MB among the clients (0: none)")
    p.add_argument("--json", type=Path, help="also write every result here")
    args = p.parse_args(argv)
    options = LoadOptions(args.clients, args.requests, args.max_tokens, time_limit_s=args.time_limit,
                          huge_prompt_mb=args.huge_prompt_mb)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, tokenizer = args.checkpoint, args.tokenizer
        if checkpoint is None:  # a fresh model with a tokenizer of its own size, so text prompts can be served
            config = llmdual.Config.preset(args.preset)
            tok = llmdual.Tokenizer.train(Path(llmdual.__file__).parent, max(config.vocab_size, MIN_VOCAB))
            model = llmdual.build(config.replace(vocab_size=tok.vocab_size), "torch", seed=0)
            checkpoint = llmdual.save(model, Path(tmp) / f"{args.preset}.safetensors")
            tokenizer = tok.save(Path(tmp) / "tokenizer.json")
        results = []
        for engine in args.engines.split(","):
            print(f"{engine}: {args.clients} clients x {args.requests} requests ...", file=sys.stderr)
            results.append(run_load(checkpoint, engine.strip(), options, tokenizer))
    print(table(results))
    for result in results:
        for message in sorted(set(result.error_messages))[:3]:
            print(f"{result.engine} error: {message}")
    if args.json:
        args.json.write_text(to_json(results))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
