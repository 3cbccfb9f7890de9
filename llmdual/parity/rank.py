"""One rank of a data-parallel parity run (``python -m llmdual.parity.rank``, launched by
``llmdual.parity.data_parallel``): train the LM (or classifier) on the seeded parity batches inside the engine's
data-parallel scope; rank 0 writes its history and final weights."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmdual.api import build, get_weights
from llmdual.contract import backend
from llmdual.core.config import Config
from llmdual.core.shard import rank_and_world
from llmdual.parallel.launch import LAUNCHERS
from llmdual.parity.core import ParityContext
from llmdual.parity.data_parallel import BATCH, STEPS
from llmdual.parity.training import batches, train_config
from llmdual.training import train


def main(argv: Sequence[str] | None = None) -> int:
    """One rank of a parity run: train the config's ``--task`` model (dropout 0) on the seeded batches inside the
    engine's data-parallel scope; rank 0 writes ``--out`` (history and final weights)."""
    p = argparse.ArgumentParser(prog="python -m llmdual.parity.rank")
    p.add_argument("--engine", choices=sorted(LAUNCHERS), required=True)
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", required=True, help="the model Config as JSON")
    p.add_argument("--task", choices=["lm", "classifier"], default="lm")
    p.add_argument("--checkpoint-dir")
    p.add_argument("--resume")
    p.add_argument("--batch", type=int, default=BATCH, help="global batch (rows per step)")
    p.add_argument("--seq-len", type=int, help="tokens per row (default: the context, at most 32)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    name = LAUNCHERS[args.engine][0]
    ctx = ParityContext(Config.from_json(args.config), args.task, args.seed, seq_len=args.seq_len)
    cfg = train_config(steps=args.steps, batch_size=args.batch, grad_accum=args.grad_accum, data_parallel=args.world,
                       checkpoint_dir=args.checkpoint_dir, checkpoint_interval=max(1, args.steps // 2))
    with backend(name).data_parallel_scope(args.world):
        model = build(ctx.config, name, ctx.task, ctx.seed)
        history = train(model, batches(ctx, args.batch), cfg, resume=args.resume)
        weights = get_weights(model)
    if rank_and_world()[0] == 0:
        np.savez(args.out, step=history.step, loss=history.loss, lr=history.lr, grad_norm=history.grad_norm,
                 tokens_per_s=history.tokens_per_s, **{f"w.{k}": v for k, v in weights.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
