"""Measure llmdual's performance bar: its engines against the reference GPT-2s (Hugging Face, keras-hub, nanoGPT).

    python benchmarks/perf_bar.py                       # defaults: small preset, batch 8 x 256, fp32, 2 threads
    python benchmarks/perf_bar.py --only torch-train generate --rounds 3
    python benchmarks/perf_bar.py --nanogpt ~/src/nanoGPT   # also time nanoGPT's model.py from a checkout
    python benchmarks/perf_bar.py --results bench-results/perf-bar/results.json   # the bars of a saved run

One run of the benchmark (``llmdual.bench.command.run``) over the bars' engines; the bars are a view over its
``results.json`` (``llmdual.bench.report.bars``). Needs ``pip install 'llmdual[reference]'``; engines whose packages
are missing are skipped, naming the extra. Writes ``results.json``, ``report.md``, ``perf-bar.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llmdual.bench import command
from llmdual.bench.report import bars
from llmdual.bench.report.results import read_json, write_text
from llmdual.bench.settings import BenchSettings
from llmdual.core.config import PRESETS
from llmdual.core.report import table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=32, help="generation prompt length")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every engine (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per case (KV steps 8x as many)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per case after the check")
    parser.add_argument("--budget", type=float, default=15.0,
                        help="timed seconds per case after which repeats stop (at least 3)")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per engine, reshuffled each round")
    parser.add_argument("--nanogpt", metavar="PATH", help="nanoGPT checkout (or its model.py) to time as well")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="engines or bar keys to run (default: all bars)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case before it is killed")
    parser.add_argument("--out", type=Path, default=Path("bench-results/perf-bar"))
    parser.add_argument("--results", type=Path, help="show the bars of a saved results.json instead of running")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.results:
            doc = read_json(args.results)
        else:
            engines, workloads = bars.selection(args.only)
            settings = BenchSettings(
                preset=args.preset, engines=engines, workloads=workloads, batch_sizes=(args.batch,),
                seq_lens=(args.seq_len,), prompt_len=args.prompt_len, new_tokens=args.new_tokens, device="cpu",
                warmup=args.warmup, repeats=args.repeats, budget_s=args.budget, rounds=args.rounds,
                threads=args.threads, out=str(args.out), seed=args.seed, timeout_s=args.timeout,
                nanogpt=args.nanogpt)
            doc, _ = command.run(settings, argv=sys.argv[1:] if argv is None else argv)
    except (ValueError, ImportError, command.NoDevice) as error:
        print(f"perf_bar.py: error: {error}", file=sys.stderr)
        return 2
    rows = bars.evaluate(doc, args.seed)
    print("Performance bar (per-round ratio of medians, geometric mean over rounds, bootstrap 95% interval)")
    print(table(*bars.bar_table(rows), markdown=False))
    folder = args.results.parent if args.results else args.out
    print(f"wrote {write_text(folder / 'perf-bar.md', bars.markdown(doc, rows))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
