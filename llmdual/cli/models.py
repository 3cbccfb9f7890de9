"""``llmdual generate``, ``llmdual evaluate`` and ``llmdual export``: a model file (or an ONNX export) at work."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmdual.cli.common import CliError, existing_file, id_list, tokenizer_path
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


def _lm_data(checkpoint: Path, tokenizer, args: argparse.Namespace, config) -> object:
    import numpy as np

    from llmdual.core.corpus import default_corpus_files
    from llmdual.core.data import LMDataset, token_stream

    every = default_corpus_files()
    sources = [every[i] for i in np.random.default_rng(args.seed).permutation(len(every))[: args.files]]
    block = args.block_size or min(config.max_seq_len, 64)
    return LMDataset(token_stream(tokenizer, sources), block, seed=args.seed, vocab_size=tokenizer.vocab_size)


def evaluate(args: argparse.Namespace) -> int:
    import llmdual
    from llmdual.core.tokenizer import Tokenizer

    path = tokenizer_path(args.checkpoint, args.tokenizer)
    if path is None:
        raise CliError("evaluate needs the model's tokenizer (--tokenizer tokenizer.json) to encode the corpus")
    tokenizer = Tokenizer.load(path)
    if args.backend in runtimes():
        from llmdual.onnx import evaluate as onnx_evaluate
        from llmdual.onnx import open_session
        from llmdual.onnx.runtime import export_info

        session = open_session(args.checkpoint)
        data = _lm_data(args.checkpoint, tokenizer, args, export_info(session).config)
        metrics = onnx_evaluate(session, (data.get_batch(args.split, args.batch_size, i) for i in range(args.batches)))
    else:
        model = llmdual.load(args.checkpoint, args.backend)
        if model.task != "lm":
            raise CliError(f"{args.checkpoint} holds a {model.task!r} model; evaluate runs LMs on the built-in corpus")
        data = _lm_data(args.checkpoint, tokenizer, args, model.config)
        metrics = llmdual.evaluate(model, data, args.split, args.batch_size, args.batches)
    print(json.dumps({k: float(v) for k, v in metrics.items()}))
    return 0


def export(args: argparse.Namespace) -> int:
    import llmdual
    from llmdual.export import export as export_model

    model = llmdual.load(args.checkpoint, args.backend)
    options = {"kv_cache": True} if args.kv_cache else {}
    result = export_model(model, args.out, format=args.format, **options)
    print(f"wrote {result.path} ({args.format}, {result.file_bytes / 1e6:.2f} MB), verified against the "
          f"native {args.backend} model")
    return 0


def add(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    g = sub.add_parser("generate", help="continue a prompt with a model file or ONNX export", formatter_class=fmt,
                       description="Generate with a model file on a backend, or with a KV-cache ONNX export (onnx).")
    g.add_argument("checkpoint", type=existing_file, help="model file (.safetensors), or .onnx for --backend onnx")
    g.add_argument("--backend", "--engine", dest="backend", choices=targets("decoding"), default="torch",
                   help="the backend, or the runtime of an export")
    prompt = g.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (needs the tokenizer)")
    prompt.add_argument("--ids", type=id_list, help="prompt as comma-separated token ids")
    g.add_argument("--tokenizer", type=existing_file, help="tokenizer.json (default: <stem>.tokenizer.json if present)")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=generate)

    e = sub.add_parser("evaluate", help="loss and perplexity on the built-in corpus", formatter_class=fmt,
                       description="Loss and perplexity of an LM on the standard library's source (the same file "
                       "draw as llmdual train with equal --files and --seed); prints JSON.")
    e.add_argument("checkpoint", type=existing_file, help="model file, or .onnx for --backend onnx")
    e.add_argument("--backend", "--engine", dest="backend", choices=targets("forward"), default="torch",
                   help="the backend, or the runtime of an export")
    e.add_argument("--tokenizer", type=existing_file, help="tokenizer.json (default: <stem>.tokenizer.json)")
    e.add_argument("--split", choices=["train", "val"], default="val")
    e.add_argument("--files", type=int, default=20, help="corpus files drawn")
    e.add_argument("--seed", type=int, default=0, help="corpus draw seed")
    e.add_argument("--block-size", type=int, help="default: min(max_seq_len, 64)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--batches", type=int, default=4)
    e.set_defaults(func=evaluate)

    x = sub.add_parser("export", help="export a model file (ONNX, torch.export, AOTInductor, SavedModel, LiteRT)",
                       formatter_class=fmt, description="Export a model file; every export is verified against "
                       "the native model at other shapes before it is kept.")
    x.add_argument("checkpoint", type=existing_file, help="model file (.safetensors)")
    x.add_argument("out", type=Path, help="file or folder to write")
    x.add_argument("--backend", choices=[b for b in backends() if export_formats(b)], default="torch")
    x.add_argument("--format", default="onnx", choices=export_formats(),
                   help="; ".join(f"{b}: {', '.join(export_formats(b))}" for b in backends() if export_formats(b)))
    x.add_argument("--kv-cache", action="store_true", help="export the KV-cache decoder step (for serving)")
    x.set_defaults(func=export)
