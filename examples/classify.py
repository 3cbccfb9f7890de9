"""Train the same transformer classifier in PyTorch and in Keras on a built-in task, side by side.

The task: which standard-library package (asyncio, email, multiprocessing, xml) an 8-line snippet comes from.
Both backends start from bit-identical weights, see the same batches and the same recipe; the script prints
accuracy and macro-F1 of each next to the majority-class baseline.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import llmdual  # noqa: E402
from llmdual.core.corpus import stdlib_classification_data  # noqa: E402
from llmdual.experiments.sidebyside import max_curve_gap, plot_curves, train_side_by_side  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--out", default="runs/classify")
    args = parser.parse_args()

    tokenizer, data = stdlib_classification_data(args.vocab_size, args.max_len, args.per_class)
    config = llmdual.Config.preset("tiny").replace(vocab_size=tokenizer.vocab_size, max_seq_len=args.max_len,
                                                   d_model=128, d_ff=512, num_classes=data.num_classes)
    recipe = llmdual.TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=1e-3, min_lr=1e-4,
                                 warmup_steps=args.steps // 10, eval_interval=max(1, args.steps // 6))
    print(f"task: {data.num_classes} classes {data.label_names}; {data.size('train')} training and "
          f"{data.size('val')} validation snippets; {config}")
    runs = train_side_by_side(config, "classifier", data, recipe)

    majority = data.majority_baseline("val")
    print(f"\n{'backend':<8} {'accuracy':>9} {'macro-F1':>9} {'val loss':>9} {'train s':>8}   "
          f"majority-class baseline {majority:.3f}")
    for run in runs.values():
        m = run.metrics
        print(f"{run.backend:<8} {m['accuracy']:>9.3f} {m['macro_f1']:>9.3f} {m['loss']:>9.3f} {run.seconds:>8.1f}")
    print(f"largest per-step training-loss gap between the backends: {max_curve_gap(runs):.2e} nats")
    print(f"loss curves: {plot_curves(runs, f'{args.out}/loss.png', 'Same classifier: PyTorch vs Keras')}")


if __name__ == "__main__":
    main()
