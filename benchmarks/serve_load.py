"""Load-test ``llmdual serve`` per engine: N streaming clients x M greedy requests against a server started on
127.0.0.1 (a subprocess on a free port), bounded in count and time. Prints requests/s, tokens/s, latency
p50/p90/p99, time to first token and errors per engine; the logic lives in ``llmdual.serve.load``.

    python benchmarks/serve_load.py
    python benchmarks/serve_load.py --engines torch --clients 8 --requests 10 --max-tokens 32 --preset small
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import llmdual
from llmdual.serve.load import LoadOptions, run_load, table, to_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="model file to serve (default: a fresh --preset model)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--engines", default="torch,keras,onnx")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=8, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per engine, then the clients stop")
    p.add_argument("--json", type=Path, help="also write every result here")
    args = p.parse_args(argv)
    options = LoadOptions(args.clients, args.requests, args.max_tokens, time_limit_s=args.time_limit)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or llmdual.save(
            llmdual.build(llmdual.Config.preset(args.preset), "torch", seed=0), Path(tmp) / f"{args.preset}.safetensors")
        results = []
        for engine in args.engines.split(","):
            print(f"{engine}: {args.clients} clients x {args.requests} requests ...", file=sys.stderr)
            results.append(run_load(checkpoint, engine.strip(), options))
    print(table(results))
    for result in results:
        for message in sorted(set(result.error_messages))[:3]:
            print(f"{result.engine} error: {message}")
    if args.json:
        args.json.write_text(to_json(results))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
