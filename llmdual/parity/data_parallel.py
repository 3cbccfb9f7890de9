"""Parity of data-parallel training: each framework's own engine, 2-way, against one device and against the other
frameworks, with gradient accumulation, and resumed across data-parallel degree and backend.

Every run is a fresh process (Keras' backend and JAX's device count are fixed per process), launched as its engine
needs it (``llmdual.parallel.launch.run_launched``: torchrun for PyTorch, one process per rank for the multi-process Keras
engines) running ``llmdual.parity.rank``, which trains the LM (or classifier) on ``llmdual.parity.training``'s
seeded batches and writes rank 0's history and final weights.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from llmdual.core.recipe import History
from llmdual.parallel.launch import LAUNCHERS, PROCESS_LAUNCHERS, run_launched
from llmdual.parity.core import Check, ParityContext
from llmdual.parity.training import compare_runs
from llmdual.training import run_state_prefix

# Per-step loss, N-way vs one device (and across the engines), relative: an all-reduce sums the ranks' gradients
# in another order than one device sums the batch's, so values agree to rounding, not bit for bit. Final weights:
# ``llmdual.parity.training.WEIGHT_TRAVEL_FRACTION`` of the farthest AdamW can move a weight in the run.
LOSS_RTOL = 1e-5
WORLD = 2
STEPS = 20
BATCH = 4
TIMEOUT_S = 600.0
ACCUMULATING = tuple(LAUNCHERS)  # the engines checked with gradient accumulation
# The engine whose one-rank run each engine's is: a one-process-per-rank Keras engine's one-process engine; FSDP2's
# wrap leaves one rank's model as it is, as DDP's does
ONE_RANK = {**PROCESS_LAUNCHERS, "torch-fsdp": "torch-ddp"}

Run = tuple[History, dict[str, np.ndarray]]


class Runs:
    """The training runs the checks share, each launched once per parity context, in one temporary folder."""

    def __init__(self, ctx: ParityContext):
        self.ctx, self.folder = ctx, tempfile.TemporaryDirectory(prefix="llmdual-dp-")
        self.done: dict[tuple, Run] = {}

    def checkpoints(self, engine: str, world: int, grad_accum: int = 1) -> Path:
        """The run-state folder of a run."""
        return Path(self.folder.name) / f"{engine}-{world}x{grad_accum}"

    def get(self, engine: str, world: int, grad_accum: int = 1, resume: tuple[str, int] | None = None) -> Run:
        """A run of ``engine`` on ``world`` ranks, ``STEPS`` steps of ``BATCH`` rows, run states every ``STEPS // 2``
        steps; ``resume``: (engine, world) of a run whose middle run state it continues from."""
        if world == 1:
            engine = ONE_RANK.get(engine, engine)
        key = (engine, world, grad_accum, resume)
        if key not in self.done:
            tag = f"{engine}-{world}x{grad_accum}" + (f"-from-{resume[0]}-{resume[1]}" if resume else "")
            out = Path(self.folder.name) / f"{tag}.npz"
            args = ["--engine", engine, "--world", str(world), "--grad-accum", str(grad_accum), "--out", str(out),
                    "--steps", str(STEPS), "--seed", str(self.ctx.seed), "--config", self.ctx.config.to_json(),
                    "--task", self.ctx.task]
            if resume:
                args += ["--resume", str(run_state_prefix(self.checkpoints(*resume), STEPS // 2))]
            else:
                args += ["--checkpoint-dir", str(self.checkpoints(engine, world, grad_accum))]
            self.done[key] = launch(engine, world, args)
        return self.done[key]


_RUNS: dict[tuple, Runs] = {}


def runs(ctx: ParityContext) -> Runs:
    """The shared runs of a context's config, task and seed."""
    key = (ctx.config, ctx.task, ctx.seed, STEPS)
    if key not in _RUNS:
        _RUNS[key] = Runs(ctx)
    return _RUNS[key]


def launch(engine: str, world: int, args: Sequence[str], environ: dict[str, str] | None = None) -> Run:
    """Run ``llmdual.parity.rank`` as ``world`` ranks of ``engine`` in fresh processes; rank 0's history and final
    weights. ``RuntimeError`` naming the failed rank if one fails."""
    run_launched(engine, world, ["llmdual.parity.rank", *args], os.cpu_count() or 1, environ, TIMEOUT_S)
    out = np.load(args[list(args).index("--out") + 1])
    history = History(engine, step=list(out["step"]), loss=list(out["loss"]), lr=list(out["lr"]),
                      grad_norm=list(out["grad_norm"]), tokens_per_s=list(out["tokens_per_s"]))
    return history, {k[2:]: out[k] for k in out.files if k.startswith("w.")}


def check_engines(ctx: ParityContext) -> list[Check]:
    """Each engine 2-way against itself on one device: the same global batches, the same trajectory."""
    if ctx.task != "lm":
        return []
    shared, checks = runs(ctx), []
    for engine in LAUNCHERS:
        checks += compare_runs(f"{engine} {WORLD}-way vs 1 device", shared.get(engine, 1), shared.get(engine, WORLD),
                               LOSS_RTOL)
    return checks


def check_across_frameworks(ctx: ParityContext) -> list[Check]:
    """The 2-way runs of the engines against each other (PyTorch DDP the reference)."""
    if ctx.task != "lm":
        return []
    shared, checks = runs(ctx), []
    reference = shared.get("torch-ddp", WORLD)
    for engine in [e for e in LAUNCHERS if e != "torch-ddp"]:
        checks += compare_runs(f"torch-ddp vs {engine}, {WORLD}-way", reference, shared.get(engine, WORLD), LOSS_RTOL)
    return checks


def check_accumulation(ctx: ParityContext) -> list[Check]:
    """2 ranks x 2 micro-batches per step equal one device taking the whole batch at once."""
    if ctx.task != "lm":
        return []
    shared, checks = runs(ctx), []
    for engine in ACCUMULATING:
        checks += compare_runs(f"{engine} {WORLD} ranks x 2 micro-batches vs 1 x {BATCH} rows",
                               shared.get(engine, 1), shared.get(engine, WORLD, grad_accum=2), LOSS_RTOL)
    return checks


# (engine that wrote the middle run state, its ranks) -> (engine resuming it, its ranks)
RESUMES = [(("torch-ddp", WORLD), ("torch-ddp", 1)), (("torch-ddp", 1), ("torch-ddp", WORLD)),
           (("torch-fsdp", WORLD), ("torch-ddp", 1)), (("torch-ddp", 1), ("torch-fsdp", WORLD)),
           (("torch-ddp", WORLD), ("keras-tf", 1)), (("keras-tf", WORLD), ("torch-ddp", 1)),
           (("keras-jax-multiprocess", WORLD), ("torch-ddp", 1)), (("keras-tf-multiworker", WORLD), ("torch-ddp", 1))]


def check_resume(ctx: ParityContext) -> list[Check]:
    """A run state written halfway by an N-way run resumes on one device and on the other backend (and the
    reverse), reproducing the uninterrupted run of the resuming engine."""
    if ctx.task != "lm":
        return []
    shared, checks = runs(ctx), []
    for writer, (engine, world) in RESUMES:
        resumed = shared.get(engine, world, resume=writer)
        checks += compare_runs(f"resume at {STEPS // 2}: {writer[0]} x{writer[1]} -> {engine} x{world}",
                               shared.get(engine, world), resumed, LOSS_RTOL)
    return checks


def check_classifier(ctx: ParityContext) -> list[Check]:
    """The classifier (ragged attention masks, one target per row) on PyTorch DDP, 2-way against one device; the
    LM checks above cover the engines."""
    if ctx.task != "classifier":
        return []
    shared = runs(ctx)
    return compare_runs(f"classifier, torch-ddp {WORLD}-way vs 1 device", shared.get("torch-ddp", 1),
                        shared.get("torch-ddp", WORLD), LOSS_RTOL)


CHECKS: list[Callable[[ParityContext], list[Check]]] = [
    check_engines,
    check_across_frameworks,
    check_accumulation,
    check_resume,
    check_classifier,
]

