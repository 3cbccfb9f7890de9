"""The benchmark, one entry point: ``benchmarks/compare.py`` and ``llmdual compare`` both run :func:`main`, which
parses the command line into :class:`~llmdual.bench.settings.BenchSettings` and calls :func:`run`.

Compare PyTorch, Keras (TensorFlow, XLA, JAX, torch) and onnxruntime on the same model and weights.

Every engine must reproduce the expected outputs (PyTorch eager, float32) before it is timed; each engine runs in
its own fresh process, with a live line naming its phase and the ETA. Writes ``results.json``, ``report.md`` and PNG
charts to ``--out``, prints a table per workload, and ends with the verdict: a line per priority, the caveats of
the run (a host busy with other work withholds the wins it could fake) and where the files are. The defaults (small
preset, 8 x 256 tokens, 64 new tokens, every llmdual engine) finish on 2 quiet CPU cores in about 5 minutes,
``--quick`` in about 2; see ``--help`` and README's "Benchmarks".

    llmdual compare
    llmdual compare --quick
    llmdual compare --engines torch-eager,keras-jax --workloads train --batch 8 --seq-len 256
    llmdual compare --sweep --batch 1,4,16 --seq-len 64,128 --workloads infer
    llmdual compare --preset gpt2 --device cuda --precision bf16 --priority training
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmdual.bench import env, expected, progress, runner
from llmdual.bench.engines.table import ENGINES, skip_reason
from llmdual.bench.report import charts, onscreen, tables
from llmdual.bench.report.results import WORKLOADS, Record, append_jsonl, build_document, write_json
from llmdual.bench.report.verdict import PRIORITIES
from llmdual.bench.settings import DEVICES, DTYPES, BenchSettings, Case
from llmdual.core.config import PRESETS
from llmdual.parallel.launch import usable_cores

DEFAULTS = BenchSettings()
# ``--quick``: the small shapes that measure per-op overhead more than work, without compilation (about 2 minutes).
QUICK = dataclasses.replace(DEFAULTS, batch_sizes=(2,), seq_lens=(64,), new_tokens=8,
                            engines=tuple(e for e in DEFAULTS.engines if e != "torch-compile"))
# The command line's generation prompt: this long, or the sequence length if shorter (``--quick``: the sequence).
DEFAULT_PROMPT_LEN = 64
DESCRIPTION = "Compare PyTorch, Keras (TensorFlow, XLA, JAX, torch) and onnxruntime on the same model and weights."


class NoDevice(RuntimeError):
    """``--device cuda`` on a machine without a CUDA GPU."""


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


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line; its defaults are ``BenchSettings``' (``prog`` names the command in usage and errors)."""
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
                   help=f"sequence length (a list with --sweep; default: {DEFAULTS.seq_lens[0]}, or the preset's "
                        "max_seq_len if shorter)")
    p.add_argument("--prompt-len", type=int, default=None,
                   help=f"generation prompt length (default: {DEFAULT_PROMPT_LEN} or --seq-len if shorter; "
                        "--quick: --seq-len)")
    p.add_argument("--new-tokens", type=int, default=None,
                   help=f"tokens generated per prompt (default: {DEFAULTS.new_tokens})")
    p.add_argument("--sweep", action="store_true",
                   help="run every batch x sequence combination (single values: a small grid around them)")
    p.add_argument("--precision", choices=sorted(DTYPES), default=DEFAULTS.precision,
                   help="compute precision (bf16/fp16: autocast in PyTorch, Keras' mixed policy)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls for fp32 on CUDA")
    p.add_argument("--device", choices=DEVICES, default=DEFAULTS.device)
    p.add_argument("--repeats", type=int, default=DEFAULTS.repeats, help="timed iterations per case")
    p.add_argument("--warmup", type=int, default=DEFAULTS.warmup,
                   help="untimed iterations per case after the parity check")
    p.add_argument("--budget", type=float, default=DEFAULTS.budget_s,
                   help="timed seconds per case after which repeats stop (at least 3)")
    p.add_argument("--rounds", type=int, default=DEFAULTS.rounds, help="fresh processes per engine, reshuffled")
    p.add_argument("--threads", type=int, default=DEFAULTS.threads,
                   help="CPU threads for every engine; None: all usable cores")
    p.add_argument("--priority", choices=sorted(PRIORITIES), default=DEFAULTS.priority,
                   help="the workloads (or memory) the verdict puts first and tallies")
    p.add_argument("--out", default=DEFAULTS.out, help="folder for results.json, report.md and the charts")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="weights, inputs and engine order")
    p.add_argument("--timeout", type=float, default=DEFAULTS.timeout_s, help="seconds allowed per case")
    p.add_argument("--nanogpt", metavar="PATH", default=DEFAULTS.nanogpt,
                   help="a nanoGPT checkout (or its model.py) for the nanogpt engine")
    p.add_argument("--data-parallel", type=int, default=None, metavar="N",
                   help="train workload only: tokens/s at 1 and N data-parallel workers per engine of "
                        "llmdual.parallel.launch.LAUNCHERS (PyTorch DDP and FSDP2, Keras-JAX DataParallel in one process "
                        "and across processes, Keras-TF MirroredStrategy and MultiWorkerMirroredStrategy) and the "
                        "scaling efficiency, after each engine's N-way vs 1-device parity check; --threads are shared")
    p.add_argument("--charts", action=argparse.BooleanOptionalAction, default=DEFAULTS.charts,
                   help="write PNG charts (needs matplotlib: pip install 'llmdual[report]'; default: if installed)")
    return p


def settings_of(args: argparse.Namespace) -> BenchSettings:
    """The settings a parsed command line asks for: ``--quick``'s shapes under the explicit flags; ``ValueError``
    naming every option it refuses."""
    base = QUICK if args.quick else DEFAULTS
    given = {"engines": args.engines, "batch_sizes": args.batch, "seq_lens": args.seq_len,
             "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}
    shapes = {k: getattr(base, k) if v is None else v for k, v in given.items()}
    if args.seq_len is None and args.preset in PRESETS:  # a small preset's default sequence is its longest
        shapes["seq_lens"] = tuple(min(t, PRESETS[args.preset]["max_seq_len"]) for t in shapes["seq_lens"])
    if args.prompt_len is None and not args.quick:
        shapes["prompt_len"] = min(DEFAULT_PROMPT_LEN, *shapes["seq_lens"])
    return BenchSettings(
        preset=args.preset, workloads=args.workloads, **shapes, sweep=args.sweep, precision=args.precision,
        tf32=args.tf32, device=args.device, warmup=args.warmup, repeats=args.repeats, budget_s=args.budget,
        rounds=args.rounds, threads=args.threads, priority=args.priority, out=args.out, seed=args.seed,
        timeout_s=args.timeout, nanogpt=args.nanogpt, charts=args.charts)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run a benchmark from command-line arguments; 0 when it ran, 2 for options it refused before running."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(prog).parse_args(argv)
    if args.data_parallel is not None:
        return _scaling(args, prog)
    try:
        run(settings_of(args), argv=argv)
    except (ValueError, ImportError, NoDevice) as error:  # raised before anything runs
        print(f"{prog or 'compare.py'}: error: {error}", file=sys.stderr)
        return 2
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


def resolve_device(device: str) -> str:
    """``cpu`` or ``cuda`` (``auto``: ``cuda`` where ``nvidia-smi`` lists a GPU); ``NoDevice`` for a missing GPU."""
    gpus = env.gpus()
    if device == "cuda" and not gpus:
        raise NoDevice("--device cuda: no CUDA device found (nvidia-smi lists no GPU); use --device cpu or auto")
    return "cuda" if device == "cuda" or (device == "auto" and gpus) else "cpu"


def plan_cases(settings: BenchSettings, out: Path, log: Callable[[str], None]) -> tuple[list[Case], list[Record]]:
    """The cases to run (resolved ``settings``), and the records of those decided without running (not applicable,
    no expected outputs)."""
    cases, decided = [], []
    for batch_size, seq_len in settings.points():
        todo = []
        for case in (Case(e, w, settings, batch_size, seq_len) for e in settings.engines for w in settings.workloads):
            why = skip_reason(case.engine, settings.nanogpt) or case.not_applicable()
            if why:
                decided.append(case.record("skipped", why))
            else:
                todo.append(case)
        if not todo:
            continue
        workloads = sorted({c.workload for c in todo}, key=WORKLOADS.index)
        log(f"expected outputs (batch {batch_size}, sequence {seq_len}): {', '.join(workloads)}")
        why = skip_reason("torch-eager") and f"the expected outputs need PyTorch: {skip_reason('torch-eager')}"
        path = None
        if not why:
            environment = runner.worker_env("torch-eager", settings.threads, "cpu")
            path, why = expected.compute_in_process(settings, batch_size, seq_len, workloads, out / "expected",
                                                    environment)
        if why:
            decided += [c.record("failed", f"not checked, so not timed: {why}") for c in todo]
            continue
        cases += [dataclasses.replace(c, expected=path) for c in todo]
    return cases, decided


def session_peak(records: list[Record]) -> dict[str, Any]:
    """The run's peak FLOP/s for MFU: the best matmul probe of its workers (each probes with its own framework),
    so every engine is judged against one figure; empty if none probed."""
    probes = [(r.scalars["probe_flops"], r.engine) for r in records
              if r.status == "ok" and r.scalars.get("probe_flops")]
    if not probes:
        return {}
    best, engine = max(probes)
    return {"probe_flops": best, "probe_source": f"best matmul probe of the run ({engine})"}


def run(settings: BenchSettings, log: Callable[[str], None] = print,
        command: runner.CommandBuilder = runner.worker_command, argv: Sequence[str] = ()
        ) -> tuple[dict[str, Any], list[Path]]:
    """Run the benchmark; returns the results document and the files written. ``command`` builds each worker's
    command line (tests inject faulty workers with it); ``argv``, the command line, is recorded with the run."""
    if settings.charts:
        charts.require()  # asked for charts without matplotlib: say so before anything runs
    settings = settings.resolved(resolve_device(settings.device), settings.threads or usable_cores())
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "runs.jsonl"
    jsonl.unlink(missing_ok=True)
    live = progress.Progress(0) if log is print else None  # a live status line for a person watching
    with live or contextlib.nullcontext():
        say = live.log if live else log
        if live:
            live.set_phase("computing the expected outputs (PyTorch eager, float32)")
        cases, decided = plan_cases(settings, out, say)
        for record in decided:
            append_jsonl(jsonl, record)
        records = runner.run_cases(cases, jsonl, rounds=settings.rounds, seed=settings.seed,
                                   timeout_s=settings.timeout_s, command=command, log=say, live=live)
        if live:
            live.set_phase("writing the report and charts", "")
        described = {k: v for k, v in settings.to_dict().items() if k != "config_override"}
        summary = {**described, "dtype": settings.dtype, "tolerance": settings.tolerance,
                   "points": settings.points(), "config": settings.config.to_dict(), **session_peak(records)}
        worker = runner.worker_env("torch-eager", settings.threads, settings.device, base={})
        doc = build_document(env.capture(settings.threads, flags={"argv": list(argv), "worker_env": worker}),
                             summary, decided + records)
        pictures = []
        if settings.charts or (settings.charts is None and charts.available()):
            pictures = charts.write_charts(doc, out)
        elif settings.charts is None:
            say("charts skipped: matplotlib is not installed (pip install 'llmdual[report]')")
        files = [write_json(out / "results.json", doc), tables.write_report(doc, out, settings.priority, pictures),
                 *pictures]
    tables.print_tables(doc, None if log is print else log)
    log(onscreen.block(doc, files))
    return doc, files
