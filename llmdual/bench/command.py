"""The benchmark's command line: ``benchmarks/compare.py`` and ``llmdual compare`` both run :func:`main`.

Compare PyTorch, Keras (TensorFlow, XLA, JAX, torch) and onnxruntime on the same model and weights.

Every engine must reproduce the expected outputs (PyTorch eager, float32) before it is timed; each engine runs in
its own fresh process. Writes ``results.json``, ``report.md`` and PNG charts to ``--out`` and prints a table per
workload. The defaults (small preset, 8 x 256 tokens, 64 new tokens, every llmdual engine) finish on 2 CPU cores in
about 5 minutes, ``--quick`` in about 2; see ``--help`` and README's "Benchmarks".

    llmdual compare
    llmdual compare --quick
    llmdual compare --engines torch-eager,keras-jax --workloads train --batch 8 --seq-len 256
    llmdual compare --sweep --batch 1,4,16 --seq-len 64,128 --workloads infer
    llmdual compare --preset gpt2 --device cuda --precision bf16 --priority training
"""

from __future__ import annotations

import argparse
import sys

from llmdual.bench import compare, verdict
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


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` ones, whose help says what they resolve to."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


DESCRIPTION = "Compare PyTorch, Keras (TensorFlow, XLA, JAX, torch) and onnxruntime on the same model and weights."


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """The options of a run; ``prog`` names the command in usage and errors."""
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=_Help)
    p.add_argument("--preset", default=DEFAULTS.preset, help="model size (llmdual.Config presets)")
    p.add_argument("--quick", action="store_true",
                   help="small shapes without compilation (batch 2 x 64, 8 new tokens, no torch-compile): "
                        "measures per-op overhead more than work; explicit flags still win")
    p.add_argument("--engines", type=_engines, default=None,
                   help=f"comma-separated, or all: {', '.join(ENGINES)} (default: {','.join(DEFAULTS.engines)})")
    p.add_argument("--workloads", type=_workloads, default=",".join(DEFAULTS.workloads),
                   help=f"comma-separated, or all: {', '.join(WORKLOADS)}")
    p.add_argument("--batch", type=_ints, default=None,
                   help=f"batch size (a list with --sweep; default: {DEFAULTS.batch_sizes[0]})")
    p.add_argument("--seq-len", type=_ints, default=None,
                   help=f"sequence length (a list with --sweep; default: {DEFAULTS.seq_lens[0]})")
    p.add_argument("--prompt-len", type=int, default=None,
                   help=f"generation prompt length (default: {compare.DEFAULT_PROMPT_LEN} or --seq-len if "
                        "shorter; --quick: --seq-len)")
    p.add_argument("--new-tokens", type=int, default=None,
                   help=f"tokens generated per prompt (default: {DEFAULTS.new_tokens})")
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
    p.add_argument("--priority", choices=sorted(verdict.PRIORITIES), default=DEFAULTS.priority,
                   help="the workloads (or memory) the verdict puts first and tallies")
    p.add_argument("--out", default=DEFAULTS.out, help="folder for results.json, report.md and the charts")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="weights, inputs and engine order")
    p.add_argument("--timeout", type=float, default=DEFAULTS.timeout_s, help="seconds allowed per case")
    p.add_argument("--nanogpt", metavar="PATH", help="a nanoGPT checkout (or its model.py) for the nanogpt engine")
    p.add_argument("--data-parallel", type=int, default=None, metavar="N",
                   help="train workload only: tokens/s at 1 and N data-parallel workers per engine of "
                        "llmdual.parallel.launch.LAUNCHERS (PyTorch DDP and FSDP2, Keras-JAX DataParallel in one process "
                        "and across processes, Keras-TF MirroredStrategy and MultiWorkerMirroredStrategy) and the "
                        "scaling efficiency, after each engine's N-way vs 1-device parity check; --threads are shared")
    p.add_argument("--charts", action=argparse.BooleanOptionalAction, default=None,
                   help="write PNG charts (needs matplotlib: pip install 'llmdual[report]'; default: if installed)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run a benchmark from command-line arguments; 0 when it ran, 2 for options it refused before running."""
    args = parse_args(argv, prog)
    if args.data_parallel is not None:
        return _scaling(args, prog)
    base = {**{k: getattr(DEFAULTS, k) for k in compare.QUICK}, **(compare.QUICK if args.quick else {})}
    given = {"engines": args.engines, "batch_sizes": args.batch, "seq_lens": args.seq_len,
             "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}
    shapes = {k: base[k] if v is None else v for k, v in given.items()}
    if args.prompt_len is None and not args.quick:
        shapes["prompt_len"] = min(compare.DEFAULT_PROMPT_LEN, *shapes["seq_lens"])
    try:
        options = compare.Options(
            preset=args.preset, workloads=args.workloads, **shapes, sweep=args.sweep, precision=args.precision,
            tf32=args.tf32, device=args.device, warmup=args.warmup, repeats=args.repeats, rounds=args.rounds,
            budget_s=args.budget, threads=args.threads, priority=args.priority, out=args.out, seed=args.seed,
            timeout_s=args.timeout, nanogpt=args.nanogpt, charts=args.charts,
            extra={"argv": sys.argv[1:] if argv is None else argv})
        _, files = compare.run(options)
    except (ValueError, ImportError, compare.NoDevice) as error:  # raised before anything runs
        print(f"{prog or 'compare.py'}: error: {error}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _scaling(args: argparse.Namespace, prog: str | None) -> int:
    """``--data-parallel N``: the train workload's scaling table (``llmdual.bench.scaling``)."""
    from llmdual.bench import scaling

    try:
        if tuple(args.workloads) != ("train",):
            raise ValueError(f"--data-parallel measures the train workload only; pass --workloads train "
                             f"(got {','.join(args.workloads)})")
        batch, seq_len = (args.batch or DEFAULTS.batch_sizes)[0], (args.seq_len or DEFAULTS.seq_lens)[0]
        rows = scaling.run(args.data_parallel, args.preset, batch, seq_len, threads=args.threads, out=args.out)
    except ValueError as error:
        print(f"{prog or 'compare.py'}: error: {error}", file=sys.stderr)
        return 2
    print(scaling.table(rows, args.preset, batch, seq_len))
    print(f"wrote {args.out}/scaling.json")
    return 0 if all(r["parity"] for r in rows) else 1
