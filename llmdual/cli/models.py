"""``llmdual generate``, ``llmdual evaluate`` and ``llmdual export``: a model file (or an ONNX export) at work."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmdual.cli.common import (
    CliError,
    Help,
    existing_file,
    id_list,
    output_path,
    positive_int,
    sibling,
    tokenizer_path,
)
from llmdual.contract import backends, export_formats, runtimes, targets


def generate(args: argparse.Namespace) -> int:
    import llmdual
    from llmdual.serve.engine import load_engine

    engine = load_engine(args.checkpoint, args.backend, tokenizer_path(args.checkpoint, args.tokenizer))
    if args.prompt is not None and engine.tokenizer is None:
        raise CliError("a text --prompt needs a tokenizer (--tokenizer tokenizer.json); or pass --ids 1,2,3")
    prompt = args.prompt if args.prompt is not None else args.ids
    out = llmdual.generate(engine.target, prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, seed=args.seed, tokenizer=engine.tokenizer)
    print(out if isinstance(out, str) else " ".join(map(str, out.tolist())))
    return 0


def _lm_data(tokenizer, args: argparse.Namespace, config) -> object:
    import numpy as np

    from llmdual.core.corpus import default_corpus_files
    from llmdual.core.data import LMDataset, token_stream

    every = default_corpus_files()
    sources = [every[i] for i in np.random.default_rng(args.seed).permutation(len(every))[: args.files]]
    block = args.block_size or min(config.max_seq_len, 64)
    return LMDataset(token_stream(tokenizer, sources), block, seed=args.seed, vocab_size=tokenizer.vocab_size)


def _onnx_session(path: Path, runtime: str):
    """An onnxruntime session on the export at ``path``; ``CliError`` naming the file if it is none."""
    from llmdual.onnx import open_session

    if path.suffix != ".onnx":
        raise CliError(f"--engine {runtime} evaluates an ONNX export (.onnx), got {path}: export it first "
                       f"(llmdual export {path} {path.with_suffix('.onnx')}) or pick a backend: "
                       f"{', '.join(backends('forward'))}")
    try:
        return open_session(path)
    except Exception as exc:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) derive from Exception alone
        raise CliError(f"{path} is not a readable ONNX file: {exc}") from exc


def evaluate(args: argparse.Namespace) -> int:
    import llmdual
    from llmdual.core.tokenizer import Tokenizer

    # the model first: a corrupt or wrong file is the error to report, not the tokenizer beside it
    if args.backend in runtimes():
        from llmdual.onnx.runtime import export_info

        target = _onnx_session(args.checkpoint, args.backend)
        info = export_info(target)
        config, task = info.config, info.task
    else:
        target = llmdual.load(args.checkpoint, args.backend)
        config, task = target.config, target.task
    if task != "lm":
        raise CliError(f"{args.checkpoint} holds a {task!r} model; evaluate runs LMs on the built-in corpus")
    path = tokenizer_path(args.checkpoint, args.tokenizer)
    if path is None:
        raise CliError(f"evaluate needs the model's tokenizer to encode the corpus: pass --tokenizer, or keep "
                       f"{sibling(args.checkpoint, '.tokenizer.json')} (llmdual train writes it) beside the model")
    data = _lm_data(Tokenizer.load(path), args, config)
    if args.backend in runtimes():
        from llmdual.onnx import evaluate as onnx_evaluate

        metrics = onnx_evaluate(target, (data.get_batch(args.split, args.batch_size, i) for i in range(args.batches)))
    else:
        metrics = llmdual.evaluate(target, data, args.split, args.batch_size, args.batches)
    print(json.dumps({k: float(v) for k, v in metrics.items()}))
    return 0


def export(args: argparse.Namespace) -> int:
    import llmdual
    from llmdual.export import export as export_model

    model = llmdual.load(args.checkpoint, args.backend)
    result = export_model(model, args.out, format=args.format, kv_cache=args.kv_cache, overwrite=args.overwrite)
    print(f"wrote {result.path} ({args.format}, {result.file_bytes / 1e6:.2f} MB), verified against the "
          f"native {args.backend} model")
    return 0


def add(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="continue a prompt with a model file or ONNX export", formatter_class=Help,
                       description="Generate with a model file on a backend, or with a KV-cache ONNX export (onnx).")
    g.add_argument("checkpoint", type=existing_file, help="model file (.safetensors), or .onnx for --backend onnx")
    g.add_argument("--backend", "--engine", dest="backend", choices=targets("decoding"), default="torch",
                   help="the backend, or the runtime of an export")
    prompt = g.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (needs the tokenizer)")
    prompt.add_argument("--ids", type=id_list, help="prompt as comma-separated token ids")
    g.add_argument("--tokenizer", type=existing_file, help="tokenizer.json (default: <stem>.tokenizer.json if present)")
    g.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate")
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    g.add_argument("--top-k", type=int, help="sample from the k likeliest tokens only")
    g.add_argument("--top-p", type=float, help="sample from the smallest set of tokens holding this probability")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.set_defaults(func=generate)

    e = sub.add_parser("evaluate", help="loss and perplexity on the built-in corpus", formatter_class=Help,
                       description="Loss and perplexity of an LM on the standard library's source (the same file "
                       "draw as llmdual train with equal --files and --seed); prints JSON.")
    e.add_argument("checkpoint", type=existing_file, help="model file, or .onnx for --backend onnx")
    e.add_argument("--backend", "--engine", dest="backend", choices=targets("forward"), default="torch",
                   help="the backend, or the runtime of an export")
    e.add_argument("--tokenizer", type=existing_file, help="tokenizer.json (default: <stem>.tokenizer.json)")
    e.add_argument("--split", choices=["train", "val"], default="val", help="corpus split")
    e.add_argument("--files", type=positive_int, default=20, help="corpus files drawn")
    e.add_argument("--seed", type=int, default=0, help="corpus draw seed")
    e.add_argument("--block-size", type=positive_int, help="default: min(max_seq_len, 64)")
    e.add_argument("--batch-size", type=positive_int, default=8, help="rows per batch")
    e.add_argument("--batches", type=positive_int, default=4, help="batches evaluated")
    e.set_defaults(func=evaluate)

    x = sub.add_parser("export", help="export a model file (ONNX, torch.export, AOTInductor, SavedModel, LiteRT)",
                       formatter_class=Help, description="Export a model file; every export is verified against "
                       "the native model at other shapes before it is kept.")
    x.add_argument("checkpoint", type=existing_file, help="model file (.safetensors)")
    x.add_argument("out", type=output_path, help="file or folder to write (its folder must exist)")
    x.add_argument("--backend", choices=[b for b in backends() if export_formats(b)], default="torch",
                   help="the backend the model is loaded into and exported from")
    x.add_argument("--format", default="onnx", choices=export_formats(),
                   help="; ".join(f"{b}: {', '.join(export_formats(b))}" for b in backends() if export_formats(b)))
    x.add_argument("--kv-cache", action="store_true", help="export the KV-cache decoder step (for serving)")
    x.add_argument("--overwrite", action="store_true",
                   help="write over what is at OUT even if it is not a previous export of this format (a folder "
                   "export still replaces only its own files)")
    x.set_defaults(func=export)
