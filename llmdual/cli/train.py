"""``llmdual train``: a preset or config JSON plus ``--set key=value`` overrides, trained on the built-in
corpus (the Python standard library's source) into a model file, with its tokenizer and resolved config."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from llmdual.cli.common import CliError, Help, existing_file, key_value, output_file, sibling


def preset_model(name: str, set_here: bool) -> tuple[dict[str, Any], str | None]:
    """The preset's Config dict, its ``vocab_size`` raised to the byte-level tokenizer's minimum if below and not set
    on the command line, and a note saying so (else None): the presets size models for random-id benchmarks (tiny
    has 256), the trainer's tokenizer needs every byte plus its special tokens."""
    from llmdual.core.config import Config
    from llmdual.core.tokenizer import MIN_VOCAB

    model = Config.preset(name).to_dict()
    if set_here or model["vocab_size"] >= MIN_VOCAB:
        return model, None
    note = (f"preset {name!r} has vocab_size {model['vocab_size']}, below the byte-level tokenizer's {MIN_VOCAB}; "
            f"training with vocab_size={MIN_VOCAB} (--set vocab_size=N to choose)")
    return {**model, "vocab_size": MIN_VOCAB}, note


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """``{"model": Config dict, "train": TrainConfig dict, "data": ..., "backend": ...}`` after overrides."""
    from llmdual.core.config import Config
    from llmdual.core.recipe import TrainConfig

    model: dict[str, Any] = {}
    note = None
    train: dict[str, Any] = {"steps": 100, "batch_size": 8, "lr": 1e-3}
    data: dict[str, Any] = {"files": 20, "block_size": None, "seed": 0}
    if args.config is not None:
        try:
            loaded = json.loads(args.config.read_text())
        except json.JSONDecodeError as exc:
            raise CliError(f"{args.config} is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise CliError(f"{args.config} must hold a JSON object")
        if "model" in loaded:  # a resolved config written by llmdual train
            model, train, data = loaded["model"], {**train, **loaded.get("train", {})}, {**data, **loaded.get("data", {})}
        else:
            model = loaded
    else:
        vocab_set = any(key.rpartition(".")[2] == "vocab_size" for key, _ in args.set or [])
        model, note = preset_model(args.preset, set_here=vocab_set)
    fields = {"model": {f.name for f in dataclasses.fields(Config)},
              "train": {f.name for f in dataclasses.fields(TrainConfig)} - {"checkpoint_dir"},
              "data": set(data)}
    sections = {"model": model, "train": train, "data": data}
    for key, value in args.set or []:
        section, _, name = key.rpartition(".")
        owners = [s for s in fields if name in fields[s] and section in ("", s)]
        if not owners:
            raise CliError(f"unknown setting {key!r}; model: {sorted(fields['model'])}; "
                           f"train: {sorted(fields['train'])}; data: {sorted(fields['data'])}")
        sections[owners[0]][name] = value
    config = Config.from_dict(model)
    if data["block_size"] is None:
        data["block_size"] = min(config.max_seq_len, 64)
    train_config = TrainConfig(**train)
    if note is not None:  # once the settings are known to be good, so that an error stays the only line
        print(f"llmdual train: note: {note}", file=sys.stderr)
    return {"backend": args.backend, "model": config.to_dict(), "train": train_config.to_dict(), "data": data}


def launch(args: argparse.Namespace, resolved: dict[str, Any]) -> int:
    """A PyTorch data-parallel run started outside a launcher: run this command again as ``data_parallel``
    ranks under torchrun's launcher (the resolved settings passed on as its ``--config``)."""
    import tempfile

    from llmdual.parallel.launch import run_launched, usable_cores

    world = resolved["train"]["data_parallel"]
    with tempfile.TemporaryDirectory(prefix="llmdual-train-") as tmp:
        settings = Path(tmp) / "settings.json"
        settings.write_text(json.dumps(resolved))
        print(run_launched("torch-ddp", world, ["llmdual.cli", "train", "--backend", "torch", "--config", str(settings),
                                                "--out", str(args.out.resolve())], threads=usable_cores()), end="")
    return 0


def run(args: argparse.Namespace) -> int:
    import llmdual
    from llmdual.contract import backend
    from llmdual.core.corpus import stdlib_lm_data
    from llmdual.core.shard import rank_and_world
    from llmdual.core.tokenizer import MIN_VOCAB
    from llmdual.parallel.launch import launcher_env

    resolved = resolve(args)
    world = resolved["train"]["data_parallel"]
    if world > 1 and args.backend == "torch" and "WORLD_SIZE" not in os.environ:
        return launch(args, resolved)
    if world > 1 and args.backend == "keras" and os.environ.get("KERAS_BACKEND") == "jax":
        processes = "KERAS_DISTRIBUTION_NUM_PROCESSES" in os.environ  # one process per rank, else N CPU devices
        env = launcher_env("keras-jax-multiprocess" if processes else "keras-jax", world)
        os.environ.update(XLA_FLAGS=env["XLA_FLAGS"], PJRT_NPROC=env["PJRT_NPROC"])  # read when JAX starts
    config = llmdual.Config.from_dict(resolved["model"])
    if config.vocab_size < MIN_VOCAB:
        raise CliError(f"vocab_size {config.vocab_size} is too small for the byte-level tokenizer (>= {MIN_VOCAB}); "
                       f"pass --set vocab_size={MIN_VOCAB} or more")
    data = resolved["data"]
    if data["block_size"] > config.max_seq_len:
        raise CliError(f"block_size {data['block_size']} exceeds max_seq_len {config.max_seq_len}")
    tokenizer, dataset = stdlib_lm_data(config.vocab_size, data["block_size"], data["files"], data["seed"])
    with backend(args.backend).data_parallel_scope(world):
        model = llmdual.build(config, args.backend, "lm", seed=resolved["train"]["seed"])
        history = llmdual.train(model, dataset, llmdual.TrainConfig(**resolved["train"]))
    if rank_and_world()[0] != 0:  # one writer: rank 0
        return 0
    path = llmdual.save(model, args.out)
    tokenizer.save(sibling(path, ".tokenizer.json"))
    sibling(path, ".config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    metrics = llmdual.evaluate(model, dataset, "val", max_batches=4)
    print(f"trained {args.backend} for {len(history.loss)} steps: final train loss {history.loss[-1]:.4f}, "
          f"val loss {metrics['loss']:.4f}\nwrote {path}, {sibling(path, '.tokenizer.json')}, "
          f"{sibling(path, '.config.json')}")
    return 0


def add(sub: argparse._SubParsersAction) -> None:
    from llmdual.contract import backends
    from llmdual.core.config import PRESETS

    p = sub.add_parser("train", help="train an LM on the built-in corpus into a model file",
                       description="Train an LM on the Python standard library's source. Writes the model file, "
                       "<stem>.tokenizer.json and <stem>.config.json (the resolved settings, reusable with "
                       "--config).", formatter_class=Help)
    p.add_argument("--out", type=output_file, required=True,
                   help="model file to write (.safetensors); its folder must exist")
    p.add_argument("--backend", choices=backends("training"), default="torch", help="the backend that trains")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                        help="model size (its vocab_size raised to the byte-level tokenizer's minimum if below)")
    source.add_argument("--config", type=existing_file, metavar="JSON",
                        help="a Config JSON, or a <stem>.config.json written by an earlier run")
    p.add_argument("--set", type=key_value, action="append", metavar="KEY=VALUE",
                   help="override a model (vocab_size, d_model, ...), training (steps, batch_size, lr, "
                        "data_parallel, ...) or data (files, block_size, seed) setting; repeatable; prefix "
                        "model./train./data. if ambiguous. data_parallel=N: torch launches N ranks with torchrun "
                        "(or run under torchrun yourself); Keras uses N devices (JAX) or replicas (TensorFlow)")
    p.set_defaults(func=run)
