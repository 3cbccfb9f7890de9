"""Expected outputs: what every engine must reproduce before it is timed, computed by llmdual's PyTorch model
(eager, float32, CPU, the case's canonical weights) in its own process and saved as ``.npz``.

Keys: ``infer.logits``; ``classify.logits``; ``train.loss`` and ``train.grad_norm`` of the first ``CHECK_STEPS``
steps; ``generate.{b1,batch}.{logits,tokens}`` (prefill logits, greedy tokens); ``kv.{cached,recompute}.logits``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.bench.inputs import CHECK_STEPS, Inputs, train_config
from llmdual.bench.settings import TOLERANCES, BenchSettings
from llmdual.bench.timing import streamed
from llmdual.core.io import atomic_write


def exact_tokens(dtype: str, tf32: bool = False) -> bool:
    """Whether greedy tokens must equal the expected ones: only at full float32 (no near-tie can flip)."""
    return dtype == "float32" and not tf32


def tokens_comparable(tol: float) -> bool:
    """Whether an engine held to logit tolerance ``tol`` computes float32's numbers closely enough for its greedy
    tokens to be compared: not an int8 engine (``llmdual.bench.engines.table.INT8_TOLERANCE``), where a near-tie
    flips."""
    return tol <= TOLERANCES["fp32"]


def kv_step(decoder: Any, context: np.ndarray) -> Any:
    """A call running one decoding step at ``context``'s full length after prefilling all but its last token."""
    S = context.shape[1]
    _, state = decoder.prefill(context[:, :-1], np.ones((1, S - 1), np.int64))
    return lambda: decoder.step(context[:, -1:], np.ones((1, S), np.int64), state)[0]


def compute(settings: BenchSettings, batch_size: int, seq_len: int, workloads: Sequence[str]) -> dict[str, np.ndarray]:
    """The expected outputs of ``workloads`` at the point (``batch_size``, ``seq_len``) of a run's settings
    (llmdual PyTorch eager, float32, CPU)."""
    import torch

    import llmdual
    from llmdual.contract import backend

    torch_backend = backend("torch")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    config, seed, inputs = settings.config, settings.seed, Inputs.of(settings, batch_size, seq_len)
    out: dict[str, np.ndarray] = {}
    model = llmdual.build(config, "torch", "lm", seed)
    if "infer" in workloads:
        out["infer.logits"] = llmdual.forward(model, inputs.x)
    if "classify" in workloads:
        out["classify.logits"] = llmdual.forward(llmdual.build(config, "torch", "classifier", seed), inputs.x,
                                                 inputs.mask)
    if "generate" in workloads:
        for name, prompt in inputs.prompts(settings.prompt_len or seq_len).items():
            run = streamed(torch_backend.decoder(model, True), prompt, settings.new_tokens)
            out[f"generate.{name}.logits"], out[f"generate.{name}.tokens"] = run.first_logits, run.tokens
    if "kv" in workloads:
        for name, use_cache in (("cached", True), ("recompute", False)):
            out[f"kv.{name}.logits"] = kv_step(torch_backend.decoder(model, use_cache), inputs.context)()
    if "train" in workloads:  # last: it changes the weights
        step = torch_backend.trainer(model, train_config(dataclasses.replace(settings, precision="fp32"),
                                                         batch_size)).step
        losses, norms = zip(*(step((inputs.x, inputs.y)) for _ in range(CHECK_STEPS)))
        out["train.loss"], out["train.grad_norm"] = np.array(losses), np.array(norms)
    return out


def save(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write expected outputs atomically as ``.npz``."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    return atomic_write(path, write)


def load(path: str | Path) -> dict[str, np.ndarray]:
    """Expected outputs written by :func:`save`."""
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def _largest(got: np.ndarray, want: np.ndarray, relative: bool) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    diff = np.abs(got - want)
    return float((diff / np.maximum(np.abs(want), 1e-12) if relative else diff).max())


def check(workload: str, got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], tol: float,
          tokens_exact: bool = True) -> tuple[float, str | None]:
    """The largest difference of an engine's outputs from the expected ones, and why it is refused (None if not);
    greedy tokens count only with ``tokens_exact`` at a float32 tolerance (``tokens_comparable``). ``got`` uses the
    expected keys without the workload prefix (``logits``, ``loss``, ``b1.tokens``...); a looped generation's
    ``b1.looped.tokens`` is held to ``b1.tokens``."""
    diffs: dict[str, float] = {}
    tokens_exact = tokens_exact and tokens_comparable(tol)
    for key, value in got.items():
        expected = want[f"{workload}.{key.replace('.looped.', '.')}"]
        expected = expected[: len(value)] if workload == "train" else expected
        if key.endswith("tokens"):
            value = np.asarray(value)
            if tokens_exact and not (value.shape == expected.shape and np.array_equal(value, expected)):
                where = "shape" if value.shape != expected.shape else \
                    f"first at new token {int(np.argmax((value != expected).any(axis=0)))}"
                return max(diffs.values(), default=0.0), f"greedy tokens ({key}) differ from the expected ({where})"
        else:
            diffs[key] = _largest(value, expected, relative=workload == "train")
    worst = max(diffs.values(), default=0.0)
    if worst > tol:
        name = max(diffs, key=diffs.get)
        kind = "relative difference" if workload == "train" else "max abs difference"
        return worst, f"{workload} {name}: {kind} {worst:.3g} from the expected outputs > tolerance {tol:g}"
    return worst, None


def compute_in_process(settings: BenchSettings, batch_size: int, seq_len: int, workloads: Sequence[str],
                       folder: Path, environment: Mapping[str, str]) -> tuple[str | None, str | None]:
    """Compute a point's expected outputs in a fresh process: (path, None), or (None, why not)."""
    key = json.dumps([settings.to_dict(), batch_size, seq_len, sorted(workloads)], sort_keys=True)
    path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "llmdual.bench.expected", "--settings", settings.to_json(),
               "--batch-size", str(batch_size), "--seq-len", str(seq_len), "--workloads", ",".join(workloads),
               "--out", str(path)]
    try:
        done = subprocess.run(command, env=dict(environment), capture_output=True, text=True,
                              timeout=settings.timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return None, f"computing the expected outputs timed out after {settings.timeout_s:g} s"
    if done.returncode != 0:
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "")
        return None, f"computing the expected outputs failed (exit {done.returncode}): {last[:300]}"
    return str(path.resolve()), None


def main(argv: Sequence[str] | None = None) -> int:
    """``--settings JSON --batch-size B --seq-len T --workloads a,b --out PATH``: compute the expected outputs and
    write them."""
    parser = argparse.ArgumentParser(description="compute a benchmark point's expected outputs")
    parser.add_argument("--settings", required=True, help="a run's settings as JSON (BenchSettings.to_json)")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--workloads", required=True, help="comma-separated workloads")
    parser.add_argument("--out", required=True, help=".npz file to write")
    args = parser.parse_args(argv)
    settings = BenchSettings.from_json(args.settings)
    save(args.out, compute(settings, args.batch_size, args.seq_len, args.workloads.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
