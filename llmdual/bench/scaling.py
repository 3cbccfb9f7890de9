"""Data-parallel scaling of the train workload: tokens/s at 1 and N workers per engine and the scaling efficiency
(N-way throughput / (N x 1-way)), each engine's N-way run first checked against its 1-device run
(``llmdual.parity.data_parallel``). ``compare.py --data-parallel N --workloads train`` runs it.

On CPU the N workers share the ``threads`` cores: each process of a one-process-per-rank engine (PyTorch, the
multi-process Keras engines) gets ``threads / N`` threads; a one-process Keras run's replicas are devices of that
process sharing its ``threads``-thread pool. One worker of a multi-process engine is its one-process engine's run.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.core.config import Config
from llmdual.parallel.launch import LAUNCHERS, PROCESS_LAUNCHERS, launcher_env, usable_cores
from llmdual.parity import data_parallel as dp
from llmdual.parity.core import ParityContext
from llmdual.parity.training import compare_runs

WARMUP_STEPS = 2  # the first steps compile (XLA, tf.function) and warm caches: not timed


def tokens_per_s(engine: str, world: int, config: Config, batch: int, seq_len: int, steps: int,
                 threads: int, folder: Path) -> float:
    """Median tokens/s of the timed steps of one run of ``engine`` on ``world`` workers (global batch fixed)."""
    out = folder / f"{engine}-{world}.npz"
    args = ["--engine", engine, "--world", str(world), "--steps", str(steps), "--config", config.to_json(),
            "--batch", str(batch), "--seq-len", str(seq_len), "--out", str(out)]
    environ = {**launcher_env(engine, world, threads), "OMP_WAIT_POLICY": "PASSIVE"}
    history, _ = dp.launch(engine, world, args, environ)
    return float(np.median(history.tokens_per_s[WARMUP_STEPS:]))


def run(world: int, preset: str = "small", batch: int = 8, seq_len: int = 256, steps: int = 8,
        threads: int | None = None, engines: tuple[str, ...] = tuple(LAUNCHERS), out: str | Path = "bench-results",
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Per engine: the parity check (tiny preset, N-way vs 1 device), then tokens/s at 1 and ``world`` workers
    on ``preset`` at ``batch`` x ``seq_len``; writes ``scaling.json`` to ``out`` and returns its rows."""
    if world < 2:
        raise ValueError(f"--data-parallel must be at least 2 (workers to compare with 1), got {world}")
    if batch % world:
        raise ValueError(f"the batch ({batch}) must divide into {world} equal shards")
    threads = threads or usable_cores()
    config = Config.preset(preset)
    rows, timed = [], {}
    with tempfile.TemporaryDirectory(prefix="llmdual-scaling-") as tmp:
        shared = dp.runs(ParityContext(Config.preset("tiny"), "lm", 0))
        for engine in engines:
            log(f"{engine}: parity {world}-way vs 1 device (tiny preset)")
            checks = compare_runs(f"{engine} {world}-way vs 1 device", shared.get(engine, 1),
                                  shared.get(engine, world), dp.LOSS_RTOL)
            row: dict[str, Any] = {"engine": engine, "workers": world, "threads": threads,
                                   "parity": all(c.passed for c in checks),
                                   "parity_loss_rel": checks[0].max_rel, "parity_weights_abs": checks[1].max_abs}
            try:
                for n in (1, world) if row["parity"] else ():
                    single = PROCESS_LAUNCHERS.get(engine, engine) if n == 1 else engine  # one rank: one process
                    if (single, n) not in timed:
                        log(f"{single}: timing {n} worker(s), {preset} {batch} x {seq_len}")
                        timed[single, n] = tokens_per_s(single, n, config, batch, seq_len, steps, threads, Path(tmp))
                    row[f"tokens_per_s_{n}"] = timed[single, n]
            except RuntimeError as error:  # a failed run is reported in its row; the other engines still run
                row["error"] = str(error).split("; command:")[0]
                row["detail"] = str(error).splitlines()[-16:]
                log(f"{engine}: failed: {row['error']}")
            if f"tokens_per_s_{world}" in row:
                row["efficiency"] = row[f"tokens_per_s_{world}"] / (world * row["tokens_per_s_1"])
            rows.append(row)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "scaling.json").write_text(json.dumps({"preset": preset, "batch": batch, "seq_len": seq_len,
                                                        "steps": steps, "rows": rows}, indent=2))
    return rows


def table(rows: list[dict[str, Any]], preset: str, batch: int, seq_len: int) -> str:
    """The scaling table, one row per engine."""
    world = rows[0]["workers"] if rows else 2
    width = max([len("engine")] + [len(r["engine"]) for r in rows])
    head = (f"{'engine':<{width}} {'parity (loss rel)':>18} {'tok/s x1':>10} {f'tok/s x{world}':>10} "
            f"{'efficiency':>10}")
    lines = [f"train scaling, {preset} {batch} x {seq_len}, {rows[0]['threads'] if rows else '?'} threads "
             f"shared by the workers", head, "-" * len(head)]
    for r in rows:
        verdict = f"{'ok' if r['parity'] else 'FAIL'} {r['parity_loss_rel']:.1e}"
        if "efficiency" in r:
            lines.append(f"{r['engine']:<{width}} {verdict:>18} {r['tokens_per_s_1']:>10,.0f} "
                         f"{r[f'tokens_per_s_{world}']:>10,.0f} {r['efficiency']:>10.2f}")
        else:
            done = f"{r['tokens_per_s_1']:,.0f} at 1 worker; " if "tokens_per_s_1" in r else ""
            status = re.search(r"exit status -?\d+", r.get("error", ""))
            why = (f"{world} workers failed ({status.group(0) if status else 'see scaling.json'})" if "error" in r
                   else "not timed: parity failed")
            lines.append(f"{r['engine']:<{width}} {verdict:>18}  {done}{why}")
    return "\n".join(lines)
