"""Export the same model from PyTorch and Keras to ONNX, prove the two files interchangeable, quantize, time them.

    python examples/export_onnx.py --preset small --task both

Both backends build the model from the same seed (identical canonical weights). Each export is verified against
its native model by ``llmdual.onnx.export.export_onnx``; this script then compares the two files under
onnxruntime, decodes greedily through native torch, native Keras, both files and both KV-cache files, quantizes
to int8 (quality on held-out batches of the standard-library corpus), and times onnxruntime against the native
models (tokens/s, median of the repeats). The weights are the untrained initialization, so perplexity and
accuracy are near chance; the change int8 makes to them (and the argmax agreement) is the figure to read.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import llmdual
from llmdual.corpus import default_corpus_files, stdlib_classification
from llmdual.data import ClassificationDataset, LMDataset, token_stream
from llmdual.generate import generate
from llmdual.onnx.export import export_onnx, summary_table
from llmdual.onnx.quantize import quantize, quantize_table
from llmdual.report import table
from llmdual.onnx.runtime import logits, open_session, throughput
from llmdual.tokenizer import MIN_VOCAB, Tokenizer

BACKENDS = ("torch", "keras")


def held_out(task: str, config: llmdual.Config, seq: int, batches: int) -> list[tuple[np.ndarray, ...]] | None:
    """Validation batches of the stdlib corpus (LM) or the stdlib-package snippet task (classifier); None when
    the vocabulary is too small for a byte-level tokenizer (then only sizes are reported)."""
    if config.vocab_size < MIN_VOCAB:
        return None
    files = default_corpus_files(limit=400)
    tokenizer = Tokenizer.train(files, config.vocab_size)
    if task == "lm":
        data = LMDataset(token_stream(tokenizer, files), seq, vocab_size=config.vocab_size)
        return [data.get_batch("val", 8, step) for step in range(batches)]
    texts, labels, names = stdlib_classification(n_per_class=100)
    data = ClassificationDataset(texts, labels, tokenizer, seq, label_names=names)
    return list(data.eval_batches("val", 8))[:batches]


def run_task(task: str, args: argparse.Namespace, out: Path) -> tuple[list, list, list]:
    """Export, compare, decode, quantize and time one task; returns export, quantize and throughput rows."""
    config = llmdual.Config.preset(args.preset, **({"num_classes": 4} if task == "classifier" else {}))
    models = {b: llmdual.build(config, b, task, seed=args.seed) for b in BACKENDS}
    exports = {b: export_onnx(models[b], out / f"{b}-{task}.onnx", opset=args.opset) for b in BACKENDS}
    if task == "lm":
        exports.update({f"{b}-kv": export_onnx(models[b], out / f"{b}-lm-kv.onnx", args.opset, kv_cache=True)
                        for b in BACKENDS})
    sessions = {name: open_session(r.path) for name, r in exports.items()}

    seq = min(args.seq, config.max_seq_len)
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(0, config.vocab_size, (args.batch, seq))
    mask = None
    if task == "classifier":
        mask = (np.arange(seq)[None] < rng.integers(1, seq + 1, (args.batch, 1))).astype(np.int64)
    diff = np.abs(logits(sessions["torch"], ids, mask) - logits(sessions["keras"], ids, mask)).max()
    print(f"\n[{task}] torch export vs keras export under onnxruntime, {args.batch}x{seq}: max abs diff {diff:.3e}")

    if task == "lm":
        prompt = rng.integers(0, config.vocab_size, (2, 8))
        engines = {"native torch": models["torch"], "native keras": models["keras"], **sessions}
        tokens = {name: generate(engine, prompt, args.new_tokens) for name, engine in engines.items()}
        reference = tokens["native torch"]
        for name, rows in tokens.items():
            same = all(np.array_equal(a, b) for a, b in zip(rows, reference))
            print(f"[lm] greedy via {name:<13} {'same' if same else 'DIFFERENT'}: {rows[0].tolist()}")

    batches = held_out(task, config, seq, args.quality_batches)
    quantized = [quantize(exports[b].path, out / f"{b}-{task}.int8.onnx", batches) for b in BACKENDS]
    int8 = {b: open_session(q.path) for b, q in zip(BACKENDS, quantized)}

    tokens_per_call = args.batch * seq
    speed = []
    for b in BACKENDS:
        runs = {
            f"native {b}": lambda b=b: llmdual.forward(models[b], ids, mask),
            f"ort fp32 ({b} file)": lambda b=b: logits(sessions[b], ids, mask),
            f"ort int8 ({b} file)": lambda b=b: logits(int8[b], ids, mask),
        }
        for name, fn in runs.items():
            rates = throughput(fn, tokens_per_call, repeats=args.repeats, warmup=2)
            speed.append([task, f"{args.batch}x{seq}", name, float(np.median(rates)), min(rates), max(rates)])
    return list(exports.values()), quantized, speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(llmdual.config.PRESETS))
    parser.add_argument("--task", default="both", choices=["lm", "classifier", "both"])
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: llmdual's, 18)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8, help="throughput batch size")
    parser.add_argument("--seq", type=int, default=128, help="throughput and evaluation sequence length")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per engine (median reported)")
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy tokens to compare")
    parser.add_argument("--quality-batches", type=int, default=4, help="held-out batches of 8 for int8 quality")
    parser.add_argument("--out", type=Path, default=None, help="folder for the .onnx files (default: a temp folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        exports, quantized, speed = [], [], []
        for task in ("lm", "classifier") if args.task == "both" else (args.task,):
            e, q, s = run_task(task, args, out)
            exports, quantized, speed = exports + e, quantized + q, speed + s
        print(f"\n## Exports ({args.preset}), verified against the native models\n\n{summary_table(exports)}")
        print("\nverified max abs diff per (batch x sequence[+past]) shape:")
        for r in exports:
            print(f"  {r.path.name}: " + ", ".join(f"{k} {v:.2e}" for k, v in r.max_abs_diff.items()))
        print(f"\n## Int8 dynamic quantization (held-out stdlib batches)\n\n{quantize_table(quantized)}")
        print(f"\n## CPU inference throughput, tokens/s over {args.repeats} repeats\n")
        print(table(["task", "batch x seq", "engine", "median", "min", "max"], speed))


if __name__ == "__main__":
    main()
