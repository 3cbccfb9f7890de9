"""The engines of the performance bar: llmdual and the reference GPT-2s, each as a set of timeable workloads.

An engine builds one model with the canonical weights and exposes closures over fixed inputs: ``train`` (one
optimizer step: forward, loss, backward, global-norm clipping at ``grad_clip``, AdamW), ``infer`` (no-grad
forward of the whole batch), ``generate`` (greedy, batch 1, KV cache) and, for llmdual, ``kv_cached`` /
``kv_recompute`` (one decoding step at the full context, with the cache or recomputing the prefix). Every
closure returns only when its work is done (host values), so wall-clock timing needs no extra synchronisation.

Each reference runs as its library documents it, with its own defaults (Hugging Face: SDPA attention and
fused AdamW, ``TrainingArguments``' default on torch >= 2.8; nanoGPT: its ``configure_optimizers``; keras-hub:
``compile``/``train_on_batch``, ``predict_on_batch`` and its compiled ``generate``). Where we deviate it is in
the reference's favour: no ``use_cache`` outputs from HF's batch forward, no accuracy metric in keras-hub.
Frameworks are imported inside the builders, after the worker has fixed the Keras backend for the process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.config import Config
from llmdual.training import TrainConfig

Work = Callable[[], Any]


@dataclass(frozen=True)
class EngineSpec:
    """How an engine runs: its family (which builder), Keras backend, XLA, modules it needs, workloads it has."""

    family: str
    workloads: tuple[str, ...]
    modules: tuple[str, ...]
    keras_backend: str | None = None
    xla: bool = False
    note: str = ""


_LM = ("train", "infer", "generate")
_KV = ("kv_cached", "kv_recompute")
ENGINES: dict[str, EngineSpec] = {
    "llmdual-torch": EngineSpec("llmdual-torch", _LM + _KV, ("torch",)),
    "llmdual-torch-compile": EngineSpec("llmdual-torch", ("train", "infer"), ("torch",),
                                        note="torch.compile (default mode), not eager"),
    "hf-torch": EngineSpec("hf", _LM, ("torch", "transformers")),
    "nanogpt-torch": EngineSpec("nanogpt", ("train", "infer"), ("torch",),
                                note="infer: forward with targets (its only all-positions path); exact GELU"),
    "llmdual-ort": EngineSpec("llmdual-ort", ("generate",), ("torch", "onnx", "onnxscript", "onnxruntime"),
                              note="onnxruntime over llmdual's PyTorch KV-cache export"),
    "llmdual-keras-tf": EngineSpec("llmdual-keras", _LM + _KV, ("keras", "tensorflow"), "tensorflow"),
    "llmdual-keras-tf-xla": EngineSpec("llmdual-keras", ("train", "infer"), ("keras", "tensorflow"),
                                       "tensorflow", xla=True),
    "llmdual-keras-jax": EngineSpec("llmdual-keras", _LM, ("keras", "jax"), "jax", xla=True),
    "llmdual-keras-torch": EngineSpec("llmdual-keras", _LM, ("keras", "torch"), "torch"),
    "kerashub-tf": EngineSpec("kerashub", _LM, ("keras", "tensorflow", "keras_hub"), "tensorflow"),
    "kerashub-tf-xla": EngineSpec("kerashub", _LM, ("keras", "tensorflow", "keras_hub"), "tensorflow", xla=True),
    "kerashub-jax": EngineSpec("kerashub", _LM, ("keras", "jax", "keras_hub"), "jax", xla=True),
    "kerashub-torch": EngineSpec("kerashub", _LM, ("keras", "torch", "keras_hub"), "torch"),
}


@dataclass(frozen=True)
class Inputs:
    """The fixed token arrays every engine gets: the batch (also the same-logits check), prompt, full context."""

    x: np.ndarray  # (batch, seq_len) inputs
    y: np.ndarray  # (batch, seq_len) next-token targets
    prompt: np.ndarray  # (prompt_len,) ids for generation
    context: np.ndarray  # (1, max_seq_len) ids for the KV-cache step at full context

    @classmethod
    def make(cls, config: Config, batch: int, seq_len: int, prompt_len: int, seed: int) -> Inputs:
        rng = np.random.default_rng(seed)
        tokens = rng.integers(0, config.vocab_size, (batch, seq_len + 1), dtype=np.int64)
        x, y = np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(tokens[:, 1:])
        return cls(x, y, rng.integers(0, config.vocab_size, prompt_len, dtype=np.int64),
                   rng.integers(0, config.vocab_size, (1, config.max_seq_len), dtype=np.int64))


@dataclass
class Engine:
    """A built engine: its logits on the batch, llmdual's eager logits to compare them with, its workloads."""

    logits: np.ndarray
    expected: np.ndarray
    work: dict[str, Work] = field(default_factory=dict)
    greedy: bool | None = None  # whether its generation is llmdual's greedy continuation (None: no generate)


def build_engine(name: str, config: Config, weights: dict[str, np.ndarray], inputs: Inputs, train: TrainConfig,
                 new_tokens: int, workdir: str | Path, threads: int | None = None,
                 nanogpt: str | None = None) -> Engine:
    """Build engine ``name`` holding ``weights``; ``workdir`` holds the same weights as a Hugging Face GPT-2
    checkpoint (``reference.write_hf_checkpoint``) and takes any file an engine writes (the ONNX export)."""
    spec = ENGINES[name]
    if spec.family == "llmdual-ort":
        return _ort_engine(config, weights, inputs, new_tokens, workdir, threads)
    if spec.family in ("llmdual-torch", "hf", "nanogpt"):
        return _torch_engine(name, spec, config, weights, inputs, train, new_tokens, workdir, nanogpt)
    return _keras_engine(spec, config, weights, inputs, train, new_tokens, workdir)


def _llmdual_generate(model: Any, inputs: Inputs, new_tokens: int) -> np.ndarray:
    import llmdual

    return np.asarray(llmdual.generate(model, inputs.prompt, new_tokens, stop_at_eot=False))


def is_greedy(ours: Any, prompt: np.ndarray, generated: np.ndarray) -> bool:
    """Whether ``generated`` is llmdual's greedy continuation of ``prompt``: every token the argmax of llmdual's
    logits after the prompt and the tokens before it (one teacher-forced forward, cheap on every backend)."""
    import llmdual

    ids = np.concatenate([prompt, generated])[None, :-1]
    predicted = llmdual.forward(ours, ids)[0, len(prompt) - 1:].argmax(axis=-1)
    return bool(np.array_equal(predicted, generated))


def _kv_work(model: Any, inputs: Inputs) -> dict[str, Work]:
    """One decoding step at ``max_seq_len`` tokens: with the cache of the first ``max_seq_len - 1``, and by
    recomputing all of them (``use_cache=False``), through ``llmdual.generate``'s decoders."""
    from llmdual.generate import decoder_for

    ids, S = inputs.context, inputs.context.shape[1]
    work = {}
    for key, use_cache in (("kv_cached", True), ("kv_recompute", False)):
        decoder = decoder_for(model, use_cache)
        _, state = decoder.prefill(ids[:, :-1], np.ones((1, S - 1), np.int64))
        work[key] = (lambda d=decoder, s=state: d.step(ids[:, -1:], np.ones((1, S), np.int64), s)[0])
    return work


def _torch_engine(name: str, spec: EngineSpec, config: Config, weights: dict[str, np.ndarray], inputs: Inputs,
                  train: TrainConfig, new_tokens: int, workdir: str | Path, nanogpt: str | None) -> Engine:
    import torch

    import llmdual
    from llmdual.bench import reference
    from llmdual.torch_backend.train import Trainer

    ours = llmdual.build(config, "torch", weights=weights)
    expected = llmdual.forward(ours, inputs.x)
    x, y = torch.from_numpy(inputs.x), torch.from_numpy(inputs.y)
    engine = Engine(np.empty(0), expected)
    if spec.family == "llmdual-torch":
        model = llmdual.build(config, "torch", weights=weights)
        if name.endswith("-compile"):
            model.compile()
        trainer = Trainer(model, train)
        engine.logits = llmdual.forward(model, inputs.x)
        engine.work["train"] = lambda: trainer.step((inputs.x, inputs.y))
        forward = model
    elif spec.family == "hf":
        model = reference.build_hf(workdir)
        optimizer = _hf_adamw(model, train)
        with torch.no_grad():
            engine.logits = model(x, use_cache=False).logits.numpy()

        def hf_step() -> None:
            model.train()
            model(input_ids=x, labels=x, use_cache=False).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        engine.work["train"] = hf_step
        forward = lambda ids: model(input_ids=ids, use_cache=False).logits
    else:
        model = reference.build_nanogpt(nanogpt, config, weights)
        optimizer = model.configure_optimizers(train.weight_decay, train.lr, (train.beta1, train.beta2), "cpu")
        with torch.no_grad():
            engine.logits = model(x, y)[0].numpy()

        def nanogpt_step() -> None:
            model.train()
            model(x, y)[1].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        engine.work["train"] = nanogpt_step
        forward = lambda ids: model(ids, y)[0]

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            forward(x)

    engine.work["infer"] = infer
    if "generate" in spec.workloads:
        if spec.family == "hf":
            prompt = torch.from_numpy(inputs.prompt[None])
            mask = torch.ones_like(prompt)
            engine.work["generate"] = lambda: model.generate(
                prompt, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                do_sample=False, use_cache=True)[0, prompt.shape[1]:].numpy()
        else:
            engine.work["generate"] = lambda: _llmdual_generate(model, inputs, new_tokens)
        engine.greedy = is_greedy(ours, inputs.prompt, engine.work["generate"]())
    if "kv_cached" in spec.workloads:
        engine.work.update(_kv_work(model, inputs))
    return engine


def _ort_engine(config: Config, weights: dict[str, np.ndarray], inputs: Inputs, new_tokens: int,
                workdir: str | Path, threads: int | None) -> Engine:
    """llmdual's PyTorch model exported with a KV cache (verified by the exporter) and decoded by onnxruntime
    through ``llmdual.generate``; its prefill logits are the ones checked."""
    import llmdual
    from llmdual.onnx_export import export_onnx
    from llmdual.onnx_runtime import OnnxDecoder, open_session

    ours = llmdual.build(config, "torch", weights=weights)
    path = export_onnx(ours, Path(workdir) / "kv-cache.onnx", kv_cache=True).path
    session = open_session(path, threads)
    logits, _ = OnnxDecoder(session).prefill(inputs.x, np.ones_like(inputs.x))
    engine = Engine(logits, llmdual.forward(ours, inputs.x)[:, -1])
    engine.work["generate"] = lambda: np.asarray(llmdual.generate(session, inputs.prompt, new_tokens,
                                                                  stop_at_eot=False))
    engine.greedy = is_greedy(ours, inputs.prompt, engine.work["generate"]())
    return engine


def _hf_adamw(model: Any, train: TrainConfig) -> Any:
    """AdamW as Hugging Face's ``Trainer`` builds it by default (``adamw_torch_fused``; decay on every weight but
    biases and LayerNorm, here the tensors with ``ndim >= 2``) with the recipe's hyper-parameters."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": train.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps, fused=True)


def _keras_engine(spec: EngineSpec, config: Config, weights: dict[str, np.ndarray], inputs: Inputs,
                  train: TrainConfig, new_tokens: int, workdir: str | Path) -> Engine:
    import llmdual

    ours = llmdual.build(config, "keras", weights=weights)
    engine = Engine(np.empty(0), llmdual.forward(ours, inputs.x))
    if spec.family == "llmdual-keras":
        from llmdual.keras_backend.train import Trainer

        model = llmdual.build(config, "keras", weights=weights)
        model.compile(jit_compile=spec.xla)  # for predict_on_batch; training compiles its own wrapper
        if "train" in spec.workloads:
            trainer = Trainer(model, train.replace(jit_compile=spec.xla))
            engine.work["train"] = lambda: trainer.step((inputs.x, inputs.y))
        predict = lambda ids: model.predict_on_batch(ids)
        generate = lambda: _llmdual_generate(model, inputs, new_tokens)
    else:
        import keras

        from llmdual.bench import reference

        model = reference.build_keras_hub(workdir)
        optimizer = keras.optimizers.AdamW(learning_rate=train.lr, weight_decay=train.weight_decay,
                                           beta_1=train.beta1, beta_2=train.beta2, epsilon=train.eps,
                                           global_clipnorm=train.grad_clip)
        optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) < 2])
        model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      weighted_metrics=[], sampler="greedy", jit_compile=spec.xla)
        batch = {"token_ids": inputs.x, "padding_mask": np.ones_like(inputs.x, dtype=bool)}
        engine.work["train"] = lambda: model.train_on_batch(batch, inputs.y)
        predict = lambda ids: model.predict_on_batch(
            {"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)})
        total = len(inputs.prompt) + new_tokens
        padded = np.zeros((1, total), np.int64)
        padded[0, :len(inputs.prompt)] = inputs.prompt
        prompt = {"token_ids": padded, "padding_mask": np.arange(total)[None] < len(inputs.prompt)}
        generate = lambda: np.asarray(
            model.generate(prompt, stop_token_ids=None)["token_ids"][0, len(inputs.prompt):])
    engine.logits = np.asarray(predict(inputs.x), dtype=np.float32)
    engine.work["infer"] = lambda: predict(inputs.x)
    if "generate" in spec.workloads:
        engine.work["generate"] = generate
        engine.greedy = is_greedy(ours, inputs.prompt, engine.work["generate"]())
    if "kv_cached" in spec.workloads:
        engine.work.update(_kv_work(model, inputs))
    return engine
