"""Keras training: ``compile``/``fit`` with a custom ``train_step``. Mirrors ``llmdual/backends/torch/train.py``.

Per step: micro-batches weighted by their share of the batch's targets, gradients summed, global-norm
clipping and AdamW inside the optimizer (``AdamW`` below, PyTorch's formulas), the learning rate from a
``LearningRateSchedule`` over the shared formula. A callback hands each step to ``Monitor``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras
import numpy as np
from keras import ops

from llmdual.backends.keras import distributed
from llmdual.backends.keras.api import value_and_grad
from llmdual.backends.keras.model import cross_entropy
from llmdual.backends.keras.weights import stored_transposed, variable
from llmdual.core.recipe import Batch, BatchFn, History, TrainConfig, check_batch, lr_at
from llmdual.core.shard import fail_if_asked, rank_and_world, shard_weights
from llmdual.core.weights import trainable_shapes
from llmdual.training import Monitor, check_moments, restore_run_state


def parameters(model: keras.Model) -> dict[str, keras.Variable]:
    """Trainable tensors by canonical name (the adapters alone once the model has LoRA), in canonical order (so
    the gradient norm sums in one order)."""
    return {name: variable(model, name) for name in trainable_shapes(model.config, model.task, model.lora)}


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """The shared warmup + cosine schedule (``llmdual.training.lr_at``) evaluated with ``keras.ops``."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def __call__(self, step):
        return lr_at(ops.cast(step, "float32"), self.cfg, xp=ops)

    def get_config(self):
        return self.cfg.to_dict()


class AdamW(keras.optimizers.AdamW):
    """Keras AdamW computing exactly what ``torch.optim.AdamW`` does.

    Two differences from Keras' own: epsilon is added after bias-correcting ``sqrt(v)`` (Keras adds it before,
    which is a step-dependent, larger epsilon), and ``global_clipnorm`` uses ``clip_grad_norm_``'s formula,
    ``g * min(1, max_norm / (norm + 1e-6))``, recording the pre-clip norm in ``grad_norm``.
    """

    def build(self, variables):
        super().build(variables)
        self.grad_norm = self.add_variable((), initializer="zeros", dtype="float32", name="grad_norm")

    def _clip_gradients(self, grads):
        # the global norm: summed over TensorFlow's replicas first, as Keras clips before it sums them
        norm = ops.sqrt(sum(ops.sum(ops.square(ops.cast(g, "float32"))) for g in distributed.reduce_sum(grads)))
        self.grad_norm.assign(norm)
        if not self.global_clipnorm:
            return grads
        coef = ops.minimum(self.global_clipnorm / (norm + 1e-6), 1.0)
        return [g * ops.cast(coef, g.dtype) for g in grads]

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        t = ops.cast(self.iterations + 1, dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        bias_correction1 = 1 - ops.power(ops.cast(self.beta_1, dtype), t)
        bias_correction2 = 1 - ops.power(ops.cast(self.beta_2, dtype), t)
        denom = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(bias_correction2)), self.epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(m, lr / bias_correction1), denom))


def make_optimizer(model: keras.Model, cfg: TrainConfig) -> AdamW:
    """AdamW decaying every tensor with ``ndim >= 2`` (matrices, embeddings), not biases or norm scales."""
    params = list(parameters(model).values())
    optimizer = AdamW(learning_rate=LearningRate(cfg), weight_decay=cfg.weight_decay, beta_1=cfg.beta1,
                      beta_2=cfg.beta2, epsilon=cfg.eps, global_clipnorm=cfg.grad_clip or None)
    optimizer.exclude_from_weight_decay(var_list=[p for p in params if len(p.shape) < 2])
    optimizer.build(params)
    return optimizer


def moments(optimizer: AdamW, model: keras.Model) -> dict[str, np.ndarray]:
    """AdamW's first and second moments as ``m.<name>``/``v.<name>`` in canonical layout (zeros before step 1)."""
    out = {}
    for name, p in parameters(model).items():
        index = optimizer._get_variable_index(p)
        for key, slots in (("m", optimizer._momentums), ("v", optimizer._velocities)):
            value = np.asarray(ops.convert_to_numpy(slots[index]), dtype=np.float32)
            out[f"{key}.{name}"] = np.array(value.T if stored_transposed(name) else value, order="C")  # a copy
    return out


def load_moments(optimizer: AdamW, model: keras.Model, state: dict[str, np.ndarray], step: int) -> None:
    """Restore the moments written by ``moments`` and the step count their bias correction needs; ``ValueError``
    (``check_moments``) before the optimizer is touched if a name, shape or dtype does not fit."""
    state = check_moments(state, model.config, model.task, lora=model.lora)
    for name, p in parameters(model).items():
        index = optimizer._get_variable_index(p)
        for key, slots in (("m", optimizer._momentums), ("v", optimizer._velocities)):
            value = state[f"{key}.{name}"]
            slots[index].assign(np.ascontiguousarray(value.T if stored_transposed(name) else value))
    optimizer.iterations.assign(step)


def check_precision(precision: str, model: keras.Model) -> str:
    """``precision`` if the model can train in it here: fp16 needs a GPU visible to Keras' TensorFlow backend
    (other Keras backends: refused), bf16 and fp32 run anywhere."""
    if precision == "fp16" and not _gpus():
        raise ValueError("precision 'fp16' needs a GPU (none visible to Keras); use precision 'bf16' or 'fp32'")
    return precision


@contextlib.contextmanager
def precision_context(precision: str, model: keras.Model) -> Iterator[None]:
    """Run the model's forward pass in ``precision`` (every layer on the mixed policy; variables stay float32);
    fp16 needs a GPU."""
    if check_precision(precision, model) == "fp32":
        yield
        return
    layers = list(model._flatten_layers(include_self=True, recursive=True))
    saved = [layer.dtype_policy for layer in layers]
    for layer in layers:
        layer.dtype_policy = "mixed_bfloat16" if precision == "bf16" else "mixed_float16"
    try:
        yield
    finally:
        for layer, policy in zip(layers, saved):
            layer.dtype_policy = policy


def _gpus() -> list:
    """GPUs of Keras' TensorFlow backend (other backends: none, so fp16 is refused there)."""
    if keras.backend.backend() != "tensorflow":
        return []
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


class Trainer(keras.Model):
    """One AdamW step at a time on a model: the optimizer, its step count (from ``start``: the schedule's position
    and AdamW's bias correction), the training precision and, for fp16, a ``LossScaleOptimizer`` around the
    optimizer. A ``keras.Model`` so that ``fit`` (and ``step``) run one step per batch (``cfg.jit_compile``)."""

    def __init__(self, model: keras.Model, cfg: TrainConfig, optimizer: AdamW | None = None, start: int = 0):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.params = list(parameters(model).values())
        self.built = True
        optimizer = make_optimizer(model, cfg) if optimizer is None else optimizer
        if start:
            optimizer.iterations.assign(start)
        fp16 = check_precision(cfg.precision, model) == "fp16"
        self.compile(optimizer=keras.optimizers.LossScaleOptimizer(optimizer) if fp16 else optimizer,
                     jit_compile=cfg.jit_compile)

    def train_step(self, *args):
        """Keras' hook, ``(data)``: accumulate the weighted micro-batches' gradients, then clip and update in
        ``AdamW``. On JAX, Keras calls it statelessly as ``(state, data)`` and takes back ``(logs, state)``."""
        if keras.backend.backend() == "jax":
            return self._stateless_train_step(*args)
        total, grads = self._gradients(args[0])
        self.optimizer.apply(grads, self.params)
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)  # fp16 wraps AdamW in loss scaling
        total = distributed.global_loss(total, self.cfg.data_parallel)
        logs = {"loss": total, "grad_norm": ops.convert_to_tensor(inner.grad_norm)}
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            if isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
                # Keras averages a multi-worker step's logs over the replicas along axis 0: give them one
                logs = {k: ops.reshape(v, (1,)) for k, v in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' TensorFlow hook before ``fit``, skipped: there is nothing to build (model and optimizer are built,
        nothing is compiled), and its first step, averaging a distributed batch over the replicas, fails for a dict
        batch under ``MultiWorkerMirroredStrategy`` (``strategy.reduce`` takes tensors, not dicts)."""

    def _gradients(self, data) -> tuple[object, list]:
        """The batch's loss and the gradients (canonical order) summed over its weighted micro-batches."""
        if isinstance(data, tuple):  # train_on_batch hands over (x, y, sample_weight)
            data = data[0]
        ids, targets, weights = data["ids"], data["targets"], data["weights"]
        mask = data.get("mask")
        k, rows = self.cfg.grad_accum, self.cfg.batch_size // self.cfg.grad_accum // self.cfg.data_parallel
        scale = getattr(self.optimizer, "dynamic_scale", None)  # fp16: the loss-scaling optimizer's factor
        total, grads = 0.0, None
        for i in range(k):

            def part(x, i=i):  # micro-batch i of rank-major rows: every rank's block's i-th slice of `rows` rows
                return ops.reshape(ops.reshape(x, (-1, k, rows, *x.shape[1:]))[:, i], (-1, *x.shape[1:]))

            def loss_fn(i=i):  # this micro-batch's rows and weight, bound explicitly
                with precision_context(self.cfg.precision, self.model):  # applies while the step is traced
                    logits = self.model(part(ids), None if mask is None else part(mask), training=True)
                return self.optimizer.scale_loss(cross_entropy(logits, part(targets)) * weights[0, i])

            loss, g = value_and_grad(loss_fn, self.params)
            # Embedding gathers give TensorFlow sparse slices with repeated rows: adding them to zeros sums the
            # repeats into a dense gradient, so the clipping norm and accumulation see the true gradient.
            g = [ops.add(ops.zeros(p.shape, x.dtype), x) for p, x in zip(self.params, g)]
            grads = g if grads is None else [ops.add(a, b) for a, b in zip(grads, g)]
            total = total + (loss if scale is None else loss / ops.cast(scale, loss.dtype))
        return total, grads

    def _stateless_train_step(self, state, data):
        """JAX: the same step as a pure function of the variables' values (Keras' JAX trainer contract)."""
        trainable, non_trainable, optimizer_values, metrics_values = state
        index = {id(v): i for i, v in enumerate(self.trainable_variables)}
        order = [index[id(p)] for p in self.params]
        params = [trainable[i] for i in order]
        mapping = list(zip(self.params, params)) + list(zip(self.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping):
            total, grads = self._gradients(data)
        new_params, optimizer_values = self.optimizer.stateless_apply(optimizer_values, grads, params)
        trainable = list(trainable)
        for i, value in zip(order, new_params):
            trainable[i] = value
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)  # fp16 wraps AdamW in loss scaling
        norm = optimizer_values[[id(v) for v in self.optimizer.variables].index(id(inner.grad_norm))]
        return {"loss": total, "grad_norm": norm}, (trainable, non_trainable, optimizer_values, metrics_values)

    def step(self, batch: Batch) -> tuple[float, float]:
        """One optimizer step on a numpy ``batch`` (split into ``grad_accum`` micro-batches) at the schedule's
        learning rate; returns (loss, pre-clip global gradient norm)."""
        logs = self.train_on_batch(step_inputs(batch, self.cfg, self.model), return_dict=True)
        return float(logs["loss"]), float(logs["grad_norm"])


def step_inputs(batch: Batch, cfg: TrainConfig, model: keras.Model) -> dict[str, np.ndarray]:
    """A numpy batch as ``Trainer.train_step`` takes it: ids, targets, micro-batch weights (and the mask)."""
    ids, *mask, targets = check_batch(batch, model.task, cfg, config=model.config)
    # The engines hand each replica (device) a contiguous block of rows: the ranks' shards go rank by rank, and a
    # multi-process JAX run's process feeds its own blocks. Every input is split by rows, so each row carries the
    # micro-batch weights of its replica's block, (rows, grad_accum); JAX's one program weights the union's.
    blocks = distributed.blocks(cfg)
    shares = shard_weights(targets, blocks, cfg.grad_accum)
    ids, *mask, targets = distributed.local_batch((ids, *mask, targets), cfg)
    weights = np.repeat(shares, len(targets) // blocks, axis=0)
    out = {"ids": ids, "targets": targets, "weights": weights}
    return {**out, "mask": mask[0]} if mask else out


class Batches(keras.utils.PyDataset):
    """Steps ``start .. cfg.steps - 1`` of ``get_batch`` in order, as ``fit`` consumes them."""

    def __init__(self, get_batch: BatchFn, cfg: TrainConfig, model: keras.Model, start: int):
        super().__init__()
        self.get_batch, self.cfg, self.model, self.start = get_batch, cfg, model, start

    def __len__(self) -> int:
        return self.cfg.steps - self.start

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return step_inputs(self.get_batch(self.start + index), self.cfg, self.model)


class StepMonitor(keras.callbacks.Callback):
    """Hands every finished step to the shared ``Monitor`` (history, progress bar, evaluation, run state)."""

    def __init__(self, monitor: Monitor, cfg: TrainConfig, start: int, tokens: int):
        super().__init__()
        self.monitor, self.cfg, self.start, self.tokens = monitor, cfg, start, tokens

    def on_train_batch_begin(self, batch, logs=None):
        fail_if_asked(rank_and_world()[0], self.start + batch)  # how tests stop a launched rank mid-run
        self.monitor.step_begin()

    def on_train_batch_end(self, batch, logs=None):
        step = self.start + batch
        reads_weights = self.monitor.evaluating(step) or self.monitor.saving_run_state(step)
        if reads_weights and hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()  # on JAX, fit keeps the values in its own state until synced
        self.monitor.step_end(step, float(logs["loss"]), float(lr_at(step, self.cfg)), float(logs["grad_norm"]),
                              self.tokens)


def trainer(model: keras.Model, cfg: TrainConfig, optimizer: AdamW | None = None, start: int = 0) -> Trainer:
    """The contract's trainer: one AdamW step at a time on ``model``, continuing from optimizer step ``start``."""
    return Trainer(model, cfg, optimizer, start)


def train(model: keras.Model, get_batch: BatchFn, cfg: TrainConfig, val: Sequence[Batch],
          resume: str | Path | None = None) -> History:
    """Run steps ``start .. cfg.steps - 1`` (``start`` from ``resume``'s run state, else 0); return the history."""
    if keras.backend.backend() == "jax" and model.config.dropout > 0:
        raise ValueError("Keras training on the JAX backend supports dropout 0 only (its stateless step does not "
                         "carry the dropout seed); set Config.dropout=0 or KERAS_BACKEND=tensorflow or torch")
    optimizer = make_optimizer(model, cfg)
    start, history = 0, History("keras")
    if resume is not None:
        start, state, history = restore_run_state(model, resume, cfg.steps)
        load_moments(optimizer, model, state, start)
    rank, world = distributed.rank_and_replicas(cfg)
    trainer = Trainer(distributed.wrap(model, world), cfg, optimizer, start)
    monitor = Monitor(model, cfg, val, history, start, lambda: moments(optimizer, model), rank)
    if start == cfg.steps:
        return history
    tokens = check_batch(get_batch(start), model.task, cfg, config=model.config)[0].size
    trainer.fit(Batches(get_batch, cfg, model, start), epochs=1, shuffle=False, verbose=0,
                callbacks=[StepMonitor(monitor, cfg, start, tokens)])
    return history
