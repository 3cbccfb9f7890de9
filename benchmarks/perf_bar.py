"""Measure issue 5's performance bar: llmdual against Hugging Face, keras-hub and (optionally) nanoGPT GPT-2s.

    python benchmarks/perf_bar.py                       # defaults: small preset, batch 8 x 256, fp32, 2 threads
    python benchmarks/perf_bar.py --only torch-train generate --rounds 3
    python benchmarks/perf_bar.py --nanogpt ~/src/nanoGPT   # also time nanoGPT's model.py from a checkout

Needs the ``reference`` extra (``pip install 'llmdual[reference]'``: transformers, keras-hub); engines whose
packages are missing are reported as skipped. Prints the ratio table and every engine's figures, and writes
``perf-bar.json``, ``perf-bar.md`` and the raw per-process records ``runs.jsonl`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llmdual.bench import env, perf_bar  # noqa: E402
from llmdual.bench.ref_engines import ENGINES  # noqa: E402
from llmdual.config import PRESETS  # noqa: E402
from llmdual.files import atomic_write  # noqa: E402

DEFAULT_ENGINES = ("llmdual-torch", "llmdual-torch-compile", "hf-torch", "nanogpt-torch", "llmdual-ort",
                   "llmdual-keras-tf", "llmdual-keras-tf-xla", "kerashub-tf-xla", "kerashub-tf", "kerashub-jax",
                   "kerashub-torch")


def engines_for(only: list[str] | None) -> list[str]:
    """Engines to run: the defaults, or those named by ``--only`` (engine names, ``all``, or bar keys, which
    stand for the engines their ratio needs)."""
    if not only:
        return list(DEFAULT_ENGINES)
    bars = {bar.key: bar for bar in perf_bar.BARS}
    chosen: list[str] = []
    for name in only:
        if name == "all":
            chosen += list(ENGINES)
        elif name in ENGINES:
            chosen.append(name)
        elif name in bars:
            for engine, _ in (bars[name].numerator, bars[name].denominator):
                if engine is None:
                    chosen += [e for e in perf_bar.LLMDUAL_GENERATORS if e in DEFAULT_ENGINES]
                elif engine.endswith("*"):
                    chosen += [e for e in DEFAULT_ENGINES if e.startswith(engine[:-1])]
                else:
                    chosen.append(engine)
        else:
            raise SystemExit(f"--only: unknown engine or bar {name!r}; engines: {', '.join(ENGINES)}; "
                             f"bars: {', '.join(bars)}")
    return list(dict.fromkeys(chosen))


def print_table(console: Console, title: str, header: list[str], rows: list[list[str]]) -> None:
    table = Table(*header, title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every engine (default 2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed train/infer steps per process (generation 2x, KV steps 8x as many)")
    parser.add_argument("--budget", type=float, default=15.0,
                        help="timed seconds per workload and process after which repeats stop (min. 3)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="fresh processes per engine behind a bar, interleaved (table-only engines: one)")
    parser.add_argument("--nanogpt", metavar="PATH", help="nanoGPT checkout (or its model.py) to time as well")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="engines or bar keys to run (default: all bars)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per process before it is killed")
    parser.add_argument("--out", type=Path, default=Path("bench-results/perf-bar"))
    args = parser.parse_args(argv)

    console = Console(width=200)
    settings = perf_bar.make_settings(args.preset, args.batch, args.seq_len, threads=args.threads,
                                      repeats=args.repeats, budget_s=args.budget, seed=args.seed,
                                      nanogpt=args.nanogpt)
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "runs.jsonl"
    jsonl.unlink(missing_ok=True)
    records = perf_bar.run(engines_for(args.only), settings, args.rounds, jsonl, args.seed, args.timeout,
                           log=lambda line: console.print(line, markup=False, highlight=False))
    engines = perf_bar.pooled(records)
    doc = perf_bar.document(perf_bar.evaluate(engines, args.seed), perf_bar.engine_rows(engines, args.seed),
                            settings, env.capture(args.threads), args.rounds)
    print_table(console, "Performance bar (per-round ratio of medians, geometric mean over rounds, bootstrap 95% "
                "interval)", *perf_bar.bar_table(doc["bars"]))
    print_table(console, "Engines (median [95% interval])", *perf_bar.engine_table(doc["engines"]))
    atomic_write(args.out / "perf-bar.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n"))
    atomic_write(args.out / "perf-bar.md", lambda tmp: Path(tmp).write_text(perf_bar.markdown_report(doc)))
    console.print(f"wrote {args.out / 'perf-bar.json'}, {args.out / 'perf-bar.md'} and {jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
