"""Compare PyTorch, Keras (TensorFlow, XLA, JAX, torch) and onnxruntime on the same model and weights.

Every engine must reproduce the expected outputs (PyTorch eager, float32) before it is timed; each engine runs in
its own fresh process. Writes ``results.json``, ``report.md`` and PNG charts to ``--out`` and prints a table per
workload. The defaults finish on 2 CPU cores in a few minutes; see ``--help`` and README's "Benchmarks".

    python benchmarks/compare.py
    python benchmarks/compare.py --engines torch-eager,keras-jax --workloads train --batch 8 --seq-len 256
    python benchmarks/compare.py --sweep --batch 1,4,16 --seq-len 64,128 --workloads infer
    python benchmarks/compare.py --preset gpt2 --device cuda --precision bf16 --priority training
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llmdual.bench import compare, report
from llmdual.bench.engines import ENGINES
from llmdual.bench.results import WORKLOADS

DEFAULTS = compare.Options()


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _engines(text: str) -> tuple[str, ...]:
    return tuple(ENGINES) if text == "all" else _names(text)


def _workloads(text: str) -> tuple[str, ...]:
    return WORKLOADS if text == "all" else _names(text)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default=DEFAULTS.preset, help="model size (llmdual.Config presets)")
    p.add_argument("--engines", type=_engines, default=",".join(DEFAULTS.engines),
                   help=f"comma-separated, or all: {', '.join(ENGINES)}")
    p.add_argument("--workloads", type=_workloads, default=",".join(DEFAULTS.workloads),
                   help=f"comma-separated, or all: {', '.join(WORKLOADS)}")
    p.add_argument("--batch", type=_ints, default=",".join(map(str, DEFAULTS.batch_sizes)),
                   help="batch size (a list with --sweep)")
    p.add_argument("--seq-len", type=_ints, default=",".join(map(str, DEFAULTS.seq_lens)),
                   help="sequence length, also the generation prompt's (a list with --sweep)")
    p.add_argument("--prompt-len", type=int, default=None, help="generation prompt length (default: --seq-len)")
    p.add_argument("--new-tokens", type=int, default=DEFAULTS.new_tokens, help="tokens generated per prompt")
    p.add_argument("--sweep", action="store_true",
                   help="run every batch x sequence combination (single values: a small grid around them)")
    p.add_argument("--precision", choices=sorted(compare.DTYPES), default=DEFAULTS.precision,
                   help="compute precision (bf16/fp16: autocast in PyTorch, Keras' mixed policy)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls for fp32 on CUDA")
    p.add_argument("--device", choices=compare.DEVICES, default=DEFAULTS.device)
    p.add_argument("--repeats", type=int, default=DEFAULTS.repeats, help="timed iterations per case")
    p.add_argument("--warmup", type=int, default=DEFAULTS.warmup,
                   help="untimed iterations per case after the parity check")
    p.add_argument("--budget", type=float, default=None,
                   help="timed seconds per case after which repeats stop (at least 3)")
    p.add_argument("--rounds", type=int, default=DEFAULTS.rounds, help="fresh processes per engine, reshuffled")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every engine; None: all usable cores")
    p.add_argument("--priority", choices=sorted(report.PRIORITIES), default=DEFAULTS.priority,
                   help="what the report's recommendation optimises for")
    p.add_argument("--out", default=DEFAULTS.out, help="folder for results.json, report.md and the charts")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="weights, inputs and engine order")
    p.add_argument("--timeout", type=float, default=DEFAULTS.timeout_s, help="seconds allowed per case")
    p.add_argument("--nanogpt", metavar="PATH", help="a nanoGPT checkout (or its model.py) for the nanogpt engine")
    p.add_argument("--charts", action=argparse.BooleanOptionalAction, default=None,
                   help="write PNG charts (needs matplotlib: pip install 'llmdual[report]'; default: if installed)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = compare.Options(
            preset=args.preset, engines=args.engines, workloads=args.workloads, batch_sizes=args.batch,
            seq_lens=args.seq_len, prompt_len=args.prompt_len, new_tokens=args.new_tokens, sweep=args.sweep, precision=args.precision,
            tf32=args.tf32, device=args.device, warmup=args.warmup, repeats=args.repeats, rounds=args.rounds,
            budget_s=args.budget, threads=args.threads, priority=args.priority, out=args.out, seed=args.seed,
            timeout_s=args.timeout, nanogpt=args.nanogpt, charts=args.charts,
            extra={"argv": sys.argv[1:] if argv is None else argv})
        _, files = compare.run(options)
    except (ValueError, ImportError, compare.NoDevice) as error:  # raised before anything runs
        print(f"compare.py: error: {error}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
