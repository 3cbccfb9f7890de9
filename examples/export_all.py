"""Export the same LM to every format of both backends and time each one: export, size, load, latency.

    python examples/export_all.py --preset small

Both backends build the model from the same seed (identical canonical weights). ``llmdual.export`` writes each
format (ONNX from either backend; torch.export and AOTInductor from PyTorch; a SavedModel and LiteRT from Keras) and
verifies it against the native model, reloaded in a fresh process for the native formats, before keeping it.
The table then loads each export in this process and times a full forward pass at batch 1 and 8 (median of
the repeats); the native models are timed alike for reference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import llmdual
from llmdual.contract import backends, export_formats, native_formats
from llmdual.core.report import table
from llmdual.export import formats_for
from llmdual.native import load
from llmdual.native.export import size_of
from llmdual.onnx.runtime import logits, open_session, throughput


def suffix(format: str) -> str:
    """The file suffix an export of ``format`` is written with (folders take none)."""
    return ".onnx" if format == "onnx" else native_formats()[format][1].suffix


def plain_lm_only(format: str) -> bool:
    """Whether ``format`` exports the plain LM only (not the KV-cache decoder step)."""
    return format != "onnx" and bool(native_formats()[format][1].plain_lm_only)


def latency_ms(run, repeats: int) -> float:
    """Median wall time of one call of ``run``, in milliseconds."""
    return 1000 / float(np.median(throughput(run, 1, repeats=repeats, warmup=2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(llmdual.core.config.PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seq", type=int, default=128, help="sequence length of the timed forward passes")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per engine and batch (median)")
    parser.add_argument("--kv-cache", action="store_true", help="export the KV-cache decoder step instead")
    parser.add_argument("--out", type=Path, default=None, help="folder for the exports (default: a temp folder)")
    args = parser.parse_args()

    config = llmdual.Config.preset(args.preset)
    seq = min(args.seq, config.max_seq_len)
    batches = {B: np.random.default_rng(args.seed).integers(0, config.vocab_size, (B, seq)) for B in (1, 8)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for name in [b for b in backends() if export_formats(b)]:
            model = llmdual.build(config, name, seed=args.seed)
            ms = [latency_ms(lambda ids=ids: llmdual.forward(model, ids), args.repeats) for ids in batches.values()]
            rows.append([name, "native", "", "", "", "", *ms, ""])
            for format in [f for f in formats_for(model) if not (args.kv_cache and plain_lm_only(f))]:
                path = out / f"{name}-lm{'-kv' if args.kv_cache else ''}{suffix(format)}"
                result = llmdual.export(model, path, format=format, kv_cache=args.kv_cache)
                start = time.perf_counter()
                engine = open_session(path) if format == "onnx" else load(path, format)
                loaded = time.perf_counter() - start
                run = (lambda ids: logits(engine, ids)) if format == "onnx" else engine.logits
                ms = [latency_ms(lambda ids=ids: run(ids), args.repeats) for ids in batches.values()]
                worst = max(result.max_abs_diff.values())
                rows.append([name, format, result.export_seconds, result.verify_seconds, size_of(path) / 2**20,
                             loaded, *ms, f"{worst:.1e}"])
                print(f"{name} {format}: exported in {result.export_seconds:.1f} s, verified in "
                      f"{result.verify_seconds:.1f} s", flush=True)
    graph = "KV-cache decoder step, empty past" if args.kv_cache else "plain LM"
    print(f"\n## Exports of the {args.preset} LM ({graph}), forward pass of {seq} tokens on CPU\n")
    print(table(["backend", "format", "export s", "verify s", "size MB", "load s", "batch 1 ms", "batch 8 ms",
                 "max abs diff"], rows))


if __name__ == "__main__":
    main()
