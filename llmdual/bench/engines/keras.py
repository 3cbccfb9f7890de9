"""llmdual's Keras model on the backend ``KERAS_BACKEND`` selected for this process, run the way Keras runs it.

The forward is compiled as ``predict`` would (``tf.function``, XLA only for ``keras-tensorflow-xla``; ``jax.jit``;
eager on torch); mixed precision is Keras' global dtype policy, set before the model is built. ``keras-int8``: the
model quantized by Keras' ``model.quantize("int8")`` (see ``llmdual.quantize``).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

import llmdual
from llmdual.bench.engines.reference_models import build_keras_hub, checkpoint
from llmdual.bench.engines.runtime import EngineSettings, Runtime, quantize_scalars
from llmdual.bench.timing import PROBE_SIZE, probe
from llmdual.contract import backend
from llmdual.core.recipe import Batch, TrainConfig
from llmdual.quantize import weight_bytes

POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


class KerasRuntime(Runtime):
    """llmdual's Keras model on this process's Keras backend; ``jit_compile`` for the forward and training step;
    ``quantize`` replaces it by its int8 copy (``llmdual.quantize``), measured against it on the built-in corpus."""

    def __init__(self, settings: EngineSettings, jit_compile: bool, quantize: str | None = None):
        self.backend = keras.backend.backend()
        self.quantize, self.quality_cache = quantize, {}
        self.cuda = settings.device == "cuda"
        self.jit_compile, self.model, self.dtype = jit_compile, None, "float32"
        self.contract = backend("keras")
        threads, tf32 = settings.threads or 0, settings.uses_tf32
        if self.backend == "tensorflow":
            import tensorflow as tf

            if threads:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            tf.config.experimental.enable_tensor_float_32_execution(tf32)
            has_gpu = bool(tf.config.list_physical_devices("GPU"))
        elif self.backend == "jax":
            import jax

            jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "highest")
            has_gpu = any(d.platform == "gpu" for d in jax.devices())
        else:
            import torch

            if threads:
                torch.set_num_threads(threads)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            has_gpu = torch.cuda.is_available()
        if self.cuda and not has_gpu:
            raise RuntimeError(f"no CUDA device visible to Keras on {self.backend}")

    def prepare(self, settings: EngineSettings, task: str, kv_cache: bool) -> dict[str, float]:
        self.dtype = settings.dtype
        keras.config.set_dtype_policy(POLICIES[self.dtype])
        started = time.perf_counter()
        self.model = llmdual.build(settings.config, "keras", task, settings.seed)
        scalars = {"weights_mb": weight_bytes(self.model) / 2**20}
        if self.quantize:
            self.model, scalars = quantize_scalars(self.model, self.quantize, settings, self.quality_cache)
            started += scalars["quality_s"]  # the quality measurement is reported on its own
        return {"build_s": time.perf_counter() - started, **scalars}

    def sync(self, output: Any = None) -> Any:
        """Wait for ``output`` (JAX dispatches asynchronously) or for the GPU's queue; returns ``output``."""
        if self.backend == "jax":
            import jax

            return jax.block_until_ready(output)
        if self.cuda and self.backend == "tensorflow":
            import tensorflow as tf

            tf.test.experimental.sync_devices()
        elif self.cuda:
            import torch

            torch.cuda.synchronize()
        return output

    def _compiled(self) -> Callable[[Any, Any], Any]:
        """The no-grad forward as Keras' ``predict`` compiles it on this backend."""
        model = self.model
        if self.backend == "tensorflow":
            import tensorflow as tf

            return tf.function(lambda ids, mask: model(ids, mask, training=False), jit_compile=self.jit_compile)
        if self.backend == "jax":
            import jax

            jitted = jax.jit(lambda trainable, other, ids, mask: model.stateless_call(
                trainable, other, ids, mask, training=False)[0])
            trainable = [v.value for v in model.trainable_variables]
            other = [v.value for v in model.non_trainable_variables]
            return lambda ids, mask: jitted(trainable, other, ids, mask)
        import torch

        def eager(ids: Any, mask: Any) -> Any:
            with torch.no_grad():
                return model(ids, mask, training=False)

        return eager

    def forward(self, ids: np.ndarray, mask: np.ndarray | None) -> Callable[[], Any]:
        fn = self._compiled()
        ids_t = ops.convert_to_tensor(np.asarray(ids, np.int64))
        mask_t = None if mask is None else ops.convert_to_tensor(np.asarray(mask, np.int64))
        return lambda: self.sync(fn(ids_t, mask_t))

    def to_numpy(self, output: Any) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(ops.cast(output, "float32")), np.float32)

    def trainer(self, cfg: TrainConfig) -> Callable[[Batch], tuple[float, float]]:
        return self.contract.trainer(self.model, cfg.replace(jit_compile=self.jit_compile)).step  # floats: done

    def decoder(self, use_cache: bool = True) -> Any:
        return self.contract.decoder(self.model, use_cache, self.jit_compile)

    def probe_flops(self) -> float:
        n = PROBE_SIZE["cuda" if self.cuda else "cpu"]
        a = ops.cast(keras.random.normal((n, n), seed=0), self.dtype)
        return probe(lambda: self.sync(ops.matmul(a, a)), n)

    def reset_peaks(self) -> None:
        if self.cuda and self.backend == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.reset_memory_stats("GPU:0")
        elif self.cuda and self.backend == "torch":
            import torch

            torch.cuda.reset_peak_memory_stats()

    def peak_device_mb(self) -> float | None:
        """The allocator's peak; on JAX the process's peak so far (JAX cannot reset it)."""
        if not self.cuda:
            return None
        if self.backend == "tensorflow":
            import tensorflow as tf

            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        if self.backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None
        import torch

        return torch.cuda.max_memory_allocated() / 2**20

    def release(self) -> None:
        self.model = None
        keras.backend.clear_session()
        gc.collect()


class KerasHubRuntime(KerasRuntime):
    """The reference keras-hub ``GPT2CausalLM`` on this process's Keras backend, compiled with ``jit_compile``;
    generation by its own compiled ``generate``."""

    decodes = False

    def prepare(self, settings: EngineSettings, task: str, kv_cache: bool) -> dict[str, float]:
        started = time.perf_counter()
        self.model = checkpoint(settings.config, settings.seed, build_keras_hub)
        self.model.compile(sampler="greedy", jit_compile=self.jit_compile)
        return {"build_s": time.perf_counter() - started}

    @staticmethod
    def batch(ids: np.ndarray) -> dict[str, np.ndarray]:
        return {"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)}

    def forward(self, ids: np.ndarray, mask: np.ndarray | None) -> Callable[[], Any]:
        return lambda: self.model.predict_on_batch(self.batch(ids))

    def trainer(self, cfg: TrainConfig) -> Callable[[Batch], tuple[float, None]]:
        """``train_on_batch`` with Keras' AdamW at the recipe's settings; Keras reports no gradient norm."""
        import keras

        optimizer = keras.optimizers.AdamW(learning_rate=cfg.lr, weight_decay=cfg.weight_decay, beta_1=cfg.beta1,
                                           beta_2=cfg.beta2, epsilon=cfg.eps, global_clipnorm=cfg.grad_clip)
        optimizer.exclude_from_weight_decay(var_list=[v for v in self.model.trainable_variables if len(v.shape) < 2])
        self.model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                           weighted_metrics=[], sampler="greedy", jit_compile=self.jit_compile)
        return lambda batch: (float(self.model.train_on_batch(self.batch(batch[0]), batch[1])), None)

    def generate(self, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
        B, T = prompt.shape
        padded = np.zeros((B, T + new_tokens), np.int64)
        padded[:, :T] = prompt
        mask = np.broadcast_to(np.arange(T + new_tokens)[None] < T, padded.shape)
        out = self.model.generate({"token_ids": padded, "padding_mask": mask}, stop_token_ids=None)
        return np.asarray(out["token_ids"])[:, T:]
