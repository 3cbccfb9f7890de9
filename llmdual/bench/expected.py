"""What every benchmark engine must reproduce before it is timed: fixed inputs and the PyTorch reference outputs.

The reference is llmdual's PyTorch model, eager, float32, on the CPU, with the canonical weights of the case's
seed (``llmdual.build(..., seed=...)`` gives every backend the same weights bit for bit). It is computed once
per measurement point in its own process (``python -m llmdual.bench.expected``, started by
:func:`llmdual.bench.compare.run`), saved as ``.npz``, and the file's path travels to the workers in the case
settings (``expected``), so no worker ever imports a second framework to check itself.

Per workload the reference holds: ``infer`` the LM logits of the batch; ``classify`` the classifier's logits
of the padded batch; ``train`` the loss and pre-clip gradient norm of the first :data:`CHECK_STEPS` optimizer
steps of ``llmdual``'s trainer (so the update is checked too, not only the first forward); ``generate`` the
prefill logits and greedy tokens at batch 1 and at the case's batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.config import Config
from llmdual.files import atomic_write
from llmdual.training import TrainConfig

CHECK_STEPS = 2  # training steps compared with the reference before timing (they count as warm-up)

# The case's dtype -> llmdual.TrainConfig's precision name.
PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}

# Accepted largest |difference| from the float32 reference, per compute precision: absolute on logits, relative
# on training loss and gradient norm. Measured on the ``small`` preset (logits up to ~2): float32 engines agree
# to ~2e-6 (fused kernels, other summation orders), so 1e-4 leaves room yet catches any real bug. bfloat16 keeps
# 8 mantissa bits (~4e-3 relative per rounding); autocast and Keras' mixed policy land ~2e-2 away, hence 1e-1.
# float16 and TF32 keep 10 bits, 8x finer than bfloat16, hence 2e-2.
TOLERANCES = {"fp32": 1e-4, "tf32": 2e-2, "bf16": 1e-1, "fp16": 2e-2}


def tolerance(dtype: str, tf32: bool = False) -> float:
    """The parity tolerance for a case's compute dtype (``float32`` with TF32 matmuls counts as TF32)."""
    precision = PRECISION[dtype]
    return TOLERANCES["tf32" if precision == "fp32" and tf32 else precision]


def exact_tokens(dtype: str, tf32: bool = False) -> bool:
    """Whether greedy tokens must equal the reference's: only at full float32, where no logit moves enough to
    swap the top two; reduced precision may legitimately pick a near-tie's other token."""
    return dtype == "float32" and not tf32


@dataclass(frozen=True)
class Inputs:
    """The fixed arrays of a measurement point, the same in every process that asks for them."""

    x: np.ndarray  # (batch, seq_len) token ids: LM inputs, classifier inputs and generation prompts
    y: np.ndarray  # (batch, seq_len) next-token targets
    mask: np.ndarray  # (batch, seq_len) classifier attention mask: row 0 full, the others right-padded

    @classmethod
    def make(cls, config: Config, batch_size: int, seq_len: int, seed: int) -> Inputs:
        rng = np.random.default_rng([seed, batch_size, seq_len])
        tokens = rng.integers(0, config.vocab_size, (batch_size, seq_len + 1), dtype=np.int64)
        lengths = np.r_[seq_len, rng.integers(max(1, seq_len // 2), seq_len + 1, batch_size - 1)]
        mask = (np.arange(seq_len)[None] < lengths[:, None]).astype(np.int64)
        return cls(tokens[:, :-1], tokens[:, 1:], mask)

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> Inputs:
        """The inputs of a case from its settings."""
        return cls.make(Config.from_dict(settings["config"]), settings["batch_size"], settings["seq_len"],
                        settings["seed"])


def train_config(settings: Mapping[str, Any]) -> TrainConfig:
    """The optimisation recipe every engine (and the reference) trains with: llmdual's defaults, the case's
    batch size, seed and precision, and a schedule as long as the steps the case runs."""
    steps = CHECK_STEPS + settings["warmup"] + settings["repeats"]
    return TrainConfig(steps=steps, batch_size=settings["batch_size"], seed=settings["seed"],
                       precision=PRECISION[settings["dtype"]], progress=False)


def compute(settings: Mapping[str, Any], workloads: Sequence[str]) -> dict[str, np.ndarray]:
    """The reference outputs of ``workloads`` at the settings' point (PyTorch eager, float32, CPU)."""
    import torch

    import llmdual
    from llmdual.bench.workloads import greedy
    from llmdual.generate import decoder_for
    from llmdual.torch_backend.train import Trainer

    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
    config, seed = Config.from_dict(settings["config"]), settings["seed"]
    inputs = Inputs.of(settings)
    out: dict[str, np.ndarray] = {}
    if "infer" in workloads:
        out["infer.logits"] = llmdual.forward(llmdual.build(config, "torch", "lm", seed), inputs.x)
    if "classify" in workloads:
        model = llmdual.build(config, "torch", "classifier", seed)
        out["classify.logits"] = llmdual.forward(model, inputs.x, inputs.mask)
    if "train" in workloads:
        step = Trainer(llmdual.build(config, "torch", "lm", seed), train_config({**settings, "dtype": "float32"})).step
        losses, norms = zip(*(step((inputs.x, inputs.y)) for _ in range(CHECK_STEPS)))
        out["train.loss"], out["train.grad_norm"] = np.array(losses), np.array(norms)
    if "generate" in workloads:
        decoder = decoder_for(llmdual.build(config, "torch", "lm", seed))
        for name, prompt in prompts(inputs).items():
            run = greedy(decoder, prompt, settings["new_tokens"])
            out[f"generate.{name}.logits"], out[f"generate.{name}.tokens"] = run.first_logits, run.tokens
    return out


def prompts(inputs: Inputs) -> dict[str, np.ndarray]:
    """The generation prompts: one row (batch 1) and the whole batch."""
    return {"b1": inputs.x[:1], "batch": inputs.x}


def save(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write reference outputs atomically as ``.npz``."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    return atomic_write(path, write)


def load(path: str | Path) -> dict[str, np.ndarray]:
    """Reference outputs written by :func:`save`."""
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def _largest(got: np.ndarray, want: np.ndarray, relative: bool = False) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    diff = np.abs(got - want)
    return float((diff / np.maximum(np.abs(want), 1e-12) if relative else diff).max())


def check(workload: str, got: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], tol: float,
          tokens_exact: bool = True) -> tuple[float, str | None]:
    """The largest difference of an engine's outputs from the reference, and why it is refused (None if not).

    ``got`` uses the reference's keys without the workload prefix (``logits``, ``loss``, ``b1.tokens``...).
    """
    diffs: dict[str, float] = {}
    for key, value in got.items():
        want = expected[f"{workload}.{key}"]
        if key.endswith("tokens"):
            same = np.asarray(value).shape == want.shape and bool(np.array_equal(value, want))
            if tokens_exact and not same:
                where = "shape" if np.asarray(value).shape != want.shape else \
                    f"first at new token {int(np.argmax((np.asarray(value) != want).any(axis=0)))}"
                return _worst(diffs), f"greedy tokens ({key}) differ from the PyTorch reference's ({where})"
        else:
            diffs[key] = _largest(value, want, relative=workload == "train")
    worst = _worst(diffs)
    if worst > tol:
        name = max(diffs, key=diffs.get)
        kind = "relative difference" if workload == "train" else "max abs difference"
        return worst, f"{workload} {name}: {kind} {worst:.3g} from the PyTorch reference > tolerance {tol:g}"
    return worst, None


def _worst(diffs: Mapping[str, float]) -> float:
    return max(diffs.values(), default=0.0)


def main(argv: Sequence[str] | None = None) -> int:
    """``--settings JSON --workloads a,b --out PATH``: compute the reference outputs and write them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", required=True, help="a case's settings as JSON")
    parser.add_argument("--workloads", required=True, help="comma-separated workloads")
    parser.add_argument("--out", required=True, help=".npz file to write")
    args = parser.parse_args(argv)
    save(args.out, compute(json.loads(args.settings), args.workloads.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
