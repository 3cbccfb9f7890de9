"""The PyTorch reference implementations as runtimes: HF GPT-2 (eager, compiled) and nanoGPT.

Each runs as its library documents it (HF: SDPA, fused AdamW and its own ``generate``; nanoGPT:
``configure_optimizers``) with the case's canonical weights; where we deviate it favours the reference (HF's
loss over all T targets, no ``use_cache`` outputs from its batch forward). keras-hub is in ``engines.keras``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from llmdual.bench.engines import reference_models
from llmdual.bench.engines.runtime import EngineSettings
from llmdual.bench.engines.torch import TorchRuntime
from llmdual.core.recipe import Batch, TrainConfig
from llmdual.core.weights import init_weights


class _TorchReference(TorchRuntime):
    """A PyTorch reference: subclasses give the model, its logits, its loss and its optimizer."""

    def load(self, settings: EngineSettings) -> Any:
        raise NotImplementedError

    def logits(self, x: Any, y: Any) -> Any:
        raise NotImplementedError

    def loss(self, x: Any, y: Any) -> Any:
        raise NotImplementedError

    def optimizer(self, cfg: TrainConfig) -> Any:
        raise NotImplementedError

    def prepare(self, settings: EngineSettings, task: str, kv_cache: bool) -> dict[str, float]:
        started = time.perf_counter()
        self.model = self.load(settings).to(self.device).eval()
        if self.compile:
            self.model.compile()
        return {"build_s": time.perf_counter() - started}

    def tensor(self, array: np.ndarray) -> Any:
        import torch

        return torch.as_tensor(array, dtype=torch.long, device=self.device)

    def forward(self, ids: np.ndarray, mask: np.ndarray | None) -> Callable[[], Any]:
        import torch

        x = self.tensor(ids)

        def run() -> Any:
            self.model.eval()
            with torch.no_grad():
                out = self.logits(x, x)
            self.sync()
            return out

        return run

    def trainer(self, cfg: TrainConfig) -> Callable[[Batch], tuple[float, float]]:
        import torch

        optimizer = self.optimizer(cfg)

        def step(batch: Batch) -> tuple[float, float]:
            x, y = self.tensor(batch[0]), self.tensor(batch[1])
            self.model.train()
            loss = self.loss(x, y)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss.item()), float(norm.item())

        return step


class HFRuntime(_TorchReference):
    """``transformers.GPT2LMHeadModel`` with the library's defaults; generation by its own ``generate``."""

    decodes = False

    def load(self, settings: EngineSettings) -> Any:
        return reference_models.checkpoint(settings.config, settings.seed, reference_models.build_hf)

    def logits(self, x: Any, y: Any) -> Any:
        return self.model(input_ids=x, use_cache=False).logits

    def loss(self, x: Any, y: Any) -> Any:
        import torch.nn.functional as F

        return F.cross_entropy(self.logits(x, y).flatten(0, 1).float(), y.flatten())

    def optimizer(self, cfg: TrainConfig) -> Any:
        """AdamW as HF's ``Trainer`` builds it by default (fused; no decay on biases and LayerNorm)."""
        import torch

        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)

    def generate(self, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
        import torch

        ids = self.tensor(prompt)
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, do_sample=False, use_cache=True)
        return out[:, ids.shape[1]:].cpu().numpy()


class NanoGPTRuntime(_TorchReference):
    """nanoGPT's ``GPT`` from a user's checkout (``settings.nanogpt``); its all-positions path needs targets."""

    def load(self, settings: EngineSettings) -> Any:
        config = settings.config
        return reference_models.build_nanogpt(settings.nanogpt, config, init_weights(config, "lm", settings.seed))

    def logits(self, x: Any, y: Any) -> Any:
        return self.model(x, y)[0]

    def loss(self, x: Any, y: Any) -> Any:
        return self.model(x, y)[1]

    def optimizer(self, cfg: TrainConfig) -> Any:
        return self.model.configure_optimizers(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), self.device.type)
