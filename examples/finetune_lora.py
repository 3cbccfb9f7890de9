"""Adapt a small GPT in PyTorch and in Keras: pretrain it on part of the standard library, fine-tune it on another
package with LoRA and in full, then serve the merged LoRA model in int8.

In each backend, from the same seed: a base LM trained on standard-library sources outside ``--package``, then from
its weights a LoRA fine-tune and a full fine-tune on ``--package``'s sources. The script prints validation loss on
the fine-tuning part, trainable weights, step time and peak memory for each; plots both backends' fine-tuning curves
on one PNG; and quantizes the merged LoRA model to int8 (torchao, Keras, and onnxruntime's for comparison), printing
its perplexity against float32. Defaults finish in about 5 minutes on 2 CPU cores.
"""

import argparse
import importlib.util
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import llmdual  # noqa: E402
from llmdual.experiments.finetune import adapt, corpus_parts, int8_quality, onnx_int8_quality, plot_adaptation  # noqa: E402
from llmdual.quantize import weight_bytes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--package", default="asyncio", help="the standard-library package to fine-tune on")
    parser.add_argument("--base-steps", type=int, default=250)
    parser.add_argument("--tune-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--files", type=int, default=200, help="standard-library files to pretrain on")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lora-lr", type=float, default=2e-3, help="LoRA's peak learning rate (full: 5e-4)")
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--backends", default="torch,keras")
    parser.add_argument("--out", default="runs/finetune_lora")
    args = parser.parse_args()

    tokenizer, base_data, target_data = corpus_parts(args.vocab_size, args.block_size, args.package, args.files)
    config = llmdual.Config.preset(args.preset).replace(vocab_size=tokenizer.vocab_size, max_seq_len=args.block_size)
    common = {"batch_size": args.batch_size, "eval_batches": args.eval_batches, "progress": False}
    base = llmdual.TrainConfig(steps=args.base_steps, lr=1e-3, min_lr=1e-4, warmup_steps=args.base_steps // 10,
                               **common)
    tune = llmdual.TrainConfig(steps=args.tune_steps, lr=5e-4, min_lr=5e-5, warmup_steps=args.tune_steps // 10,
                               eval_interval=max(1, args.tune_steps // 5), **common)
    lora = {"rank": args.rank, "alpha": 2.0 * args.rank, "targets": ("c_attn", "c_proj", "c_fc", "mlp.c_proj")}
    print(f"pretraining: {len(base_data.train):,} tokens outside {args.package}; fine-tuning: "
          f"{len(target_data.train):,} tokens of {args.package} ({len(target_data.val):,} validation); {config}")
    results = {}
    for backend in args.backends.split(","):
        results[backend] = adapt(config, backend, base_data, target_data, base, tune, lora, args.eval_batches,
                                 lora_lr=args.lora_lr)

    print(f"\nvalidation loss on {args.package} (nats/token; {args.eval_batches} batches of {args.batch_size} x "
          f"{args.block_size}), base trained {args.base_steps} steps, fine-tunes {args.tune_steps} steps")
    print(f"{'backend':<8} {'model':<6} {'val loss':>9} {'trainable':>11} {'step ms':>8} {'peak RSS MB':>12}")
    for backend, variants in results.items():
        for v in variants.values():
            step = "–" if v.step_s is None else f"{1e3 * v.step_s:.1f}"
            peak = "–" if v.peak_rss_mb is None else f"{v.peak_rss_mb:.0f}"
            print(f"{backend:<8} {v.name:<6} {v.val_loss:>9.3f} {v.trainable:>11,} {step:>8} {peak:>12}")
    path = plot_adaptation(results, f"{args.out}/finetune.png",
                           f"Fine-tuning on {args.package}: LoRA (rank {args.rank}) vs full, PyTorch vs Keras")
    print(f"fine-tuning curves: {path}")

    print("\nthe merged LoRA model in int8, perplexity on the same validation batches")
    print(f"{'engine':<14} {'weights MB':>11} {'ppl fp32':>9} {'ppl int8':>9} {'delta':>8} {'top-1 agree':>12}")
    batches = [target_data.get_batch("val", args.batch_size, i) for i in range(args.eval_batches)]
    for backend, variants in results.items():
        merged = variants["lora"].model
        quantized, q = int8_quality(merged, batches)
        print(f"{backend + '-int8':<14} {weight_bytes(quantized) / 2**20:>11.1f} {q.perplexity:>9.2f} "
              f"{q.quantized_perplexity:>9.2f} {100 * q.perplexity_delta:>+7.3f}% {100 * q.top1_agreement:>11.2f}%")
    if importlib.util.find_spec("onnxruntime") and "torch" in results:
        with tempfile.TemporaryDirectory() as folder:
            size, q = onnx_int8_quality(results["torch"]["lora"].model, batches, folder)
        print(f"{'onnxruntime':<14} {size:>11.1f} {q.perplexity:>9.2f} {q.quantized_perplexity:>9.2f} "
              f"{100 * q.perplexity_delta:>+7.3f}% {100 * q.top1_agreement:>11.2f}%   (file; from the torch model)")
    sample = llmdual.generate(quantized, "async def ", 40, temperature=0.8, top_k=40, seed=0, tokenizer=tokenizer)
    print(f"\n--- {backend}-int8 sample ---\nasync def {sample}")


if __name__ == "__main__":
    main()
