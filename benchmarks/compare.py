"""Compare PyTorch, Keras (TensorFlow, XLA, JAX, torch) and onnxruntime on the same model and weights.

Every engine must reproduce the expected outputs (PyTorch eager, float32) before it is timed; each engine runs in
its own fresh process, with a live line naming its phase and the ETA. Writes ``results.json``, ``report.md`` and PNG
charts to ``--out``, prints a table per workload, and ends with the verdict: a line per priority, the caveats of
the run (a host busy with other work withholds the wins it could fake) and where the files are. The defaults (small
preset, 8 x 256 tokens, 64 new tokens, every llmdual engine) finish on 2 quiet CPU cores in about 5 minutes,
``--quick`` in about 2; see ``--help`` and README's "Benchmarks".

    python benchmarks/compare.py
    python benchmarks/compare.py --quick
    python benchmarks/compare.py --engines torch-eager,keras-jax --workloads train --batch 8 --seq-len 256
    python benchmarks/compare.py --sweep --batch 1,4,16 --seq-len 64,128 --workloads infer
    python benchmarks/compare.py --preset gpt2 --device cuda --precision bf16 --priority training
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llmdual.bench.command import main

if __name__ == "__main__":
    sys.exit(main())
