"""The fixed inputs of a measurement point and the recipe every engine trains with (framework-free)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmdual.bench.settings import BenchSettings
from llmdual.core.recipe import TrainConfig

CHECK_STEPS = 2  # training steps compared with the expected outputs before timing (they count as warm-up)


@dataclass(frozen=True)
class Inputs:
    """The arrays of a measurement point, the same in every process that asks for them."""

    x: np.ndarray  # (B, T) token ids: LM and classifier inputs; generation prompts are its first columns
    y: np.ndarray  # (B, T) next-token targets
    mask: np.ndarray  # (B, T) classifier attention mask: row 0 full, the others right-padded
    context: np.ndarray  # (1, max_seq_len) ids for one decoding step at full context

    @classmethod
    def of(cls, settings: BenchSettings, batch_size: int, seq_len: int) -> Inputs:
        """The inputs of the point (``batch_size``, ``seq_len``) of a run's settings (its model and seed)."""
        config, B, T = settings.config, batch_size, seq_len
        rng = np.random.default_rng([settings.seed, B, T])
        tokens = rng.integers(0, config.vocab_size, (B, T + 1), dtype=np.int64)
        lengths = np.r_[T, rng.integers(max(1, T // 2), T + 1, B - 1)]
        mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int64)
        context = rng.integers(0, config.vocab_size, (1, config.max_seq_len), dtype=np.int64)
        return cls(np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(tokens[:, 1:]), mask, context)

    def prompts(self, prompt_len: int | None = None) -> dict[str, np.ndarray]:
        """The generation prompts: one row (``b1``) and the whole batch (``batch``), ``prompt_len`` tokens each."""
        x = self.x[:, :prompt_len] if prompt_len else self.x
        return {"b1": x[:1], "batch": x}


def train_config(settings: BenchSettings, batch_size: int) -> TrainConfig:
    """llmdual's default recipe at the case's batch size, seed and precision, as long as the steps the case runs."""
    steps = CHECK_STEPS + settings.warmup + settings.repeats
    return TrainConfig(steps=steps, batch_size=batch_size, seed=settings.seed, precision=settings.precision,
                       progress=False)
