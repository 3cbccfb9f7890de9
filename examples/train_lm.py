"""Train the same small GPT in PyTorch and in Keras on the standard library's source, side by side.

Both start from bit-identical weights and see the same batches with the same AdamW recipe; the script prints
the validation loss of each against the corpus' unigram baseline, writes both loss curves on one PNG and
prints a sample from each.  Defaults finish in a few minutes on 2 CPU cores.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import llmdual  # noqa: E402
from llmdual.core.corpus import stdlib_lm_data  # noqa: E402
from llmdual.experiments.sidebyside import max_curve_gap, plot_curves, train_side_by_side  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--files", type=int, default=300, help="standard-library files in the corpus")
    parser.add_argument("--out", default="runs/train_lm")
    args = parser.parse_args()

    tokenizer, data = stdlib_lm_data(args.vocab_size, args.block_size, args.files)
    config = llmdual.Config.preset("small").replace(vocab_size=tokenizer.vocab_size, max_seq_len=args.block_size)
    recipe = llmdual.TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=1e-3, min_lr=1e-4,
                                 warmup_steps=args.steps // 10, eval_interval=max(1, args.steps // 6))
    print(f"corpus: {len(data.train):,} training and {len(data.val):,} validation tokens; {config}")
    runs = train_side_by_side(config, "lm", data, recipe)

    baseline = data.unigram_entropy("val")
    print(f"\n{'backend':<8} {'val loss':>9} {'perplexity':>11} {'train s':>8}   unigram baseline {baseline:.3f}")
    for run in runs.values():
        print(f"{run.backend:<8} {run.metrics['loss']:>9.3f} {run.metrics['perplexity']:>11.1f} {run.seconds:>8.1f}")
    print(f"largest per-step training-loss gap between the backends: {max_curve_gap(runs):.2e} nats")
    path = plot_curves(runs, f"{args.out}/loss.png", "Same GPT, same batches: PyTorch vs Keras", baseline)
    print(f"loss curves: {path}\n")
    for run in runs.values():
        sample = llmdual.generate(run.model, "def ", 60, temperature=0.8, top_k=40, seed=0, tokenizer=tokenizer)
        print(f"--- {run.backend} sample ---\ndef {sample}\n")


if __name__ == "__main__":
    main()
