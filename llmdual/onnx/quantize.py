"""Int8 dynamic quantization of an llmdual ONNX export (onnxruntime's ``quantize_dynamic``), with the quality
change measured through onnxruntime."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmdual.core.io import atomic_write
from llmdual.core.report import table
from llmdual.onnx.export import check_target
from llmdual.onnx.runtime import evaluate, export_info, logits, open_session


@dataclass
class QuantizeResult:
    """An int8 (dynamic) quantization: sizes before and after, and the quality change on the given batches."""

    path: Path
    source: Path
    task: str
    bytes_before: int
    bytes_after: int
    seconds: float
    metric: str | None = None  # "perplexity" (LM) or "accuracy" (classifier), measured on the batches
    before: float | None = None
    after: float | None = None
    top1_agreement: float | None = None  # share of predictions (argmax) the int8 file keeps
    max_abs_logit_diff: float | None = None

    @property
    def size_ratio(self) -> float:
        return self.bytes_after / self.bytes_before

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path), "source": str(self.source), "size_ratio": self.size_ratio}


def quantize(
    path: str | os.PathLike, out_path: str | os.PathLike, batches: Iterable[tuple[np.ndarray, ...]] | None = None
) -> QuantizeResult:
    """Int8 dynamic quantization (onnxruntime's ``quantize_dynamic``: MatMul and Gather weights) of an llmdual
    export. With ``batches`` (LM ``(x, y)``, classifier ``(ids, mask, labels)``) both files are evaluated
    through onnxruntime: perplexity or accuracy before/after, argmax agreement and the largest logit change."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no ONNX file at {source}")
    fp32 = open_session(source)
    info = export_info(fp32)
    out_path = check_target(out_path)
    start = time.perf_counter()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic warns through the root logger about optional pre-processing
    try:
        atomic_write(out_path, lambda tmp: quantize_dynamic(source, tmp, weight_type=QuantType.QInt8))
    finally:
        root.setLevel(level)
    result = QuantizeResult(out_path, source, info.task, source.stat().st_size, out_path.stat().st_size,
                            time.perf_counter() - start)
    if batches is not None:
        int8 = open_session(out_path)
        batches = list(batches)
        result.metric = "perplexity" if info.task == "lm" else "accuracy"
        result.before = evaluate(fp32, batches)[result.metric]
        result.after = evaluate(int8, batches)[result.metric]
        agree, count, worst = 0, 0, 0.0
        for ids, *rest in batches:
            mask = rest[0] if len(rest) == 2 else None
            a, b = logits(fp32, ids, mask), logits(int8, ids, mask)
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            count += a.argmax(-1).size
            worst = max(worst, float(np.abs(a - b).max()))
        result.top1_agreement, result.max_abs_logit_diff = agree / count, worst
    return result


def quantize_table(results: Sequence[QuantizeResult], markdown: bool = True) -> str:
    """One row per quantized file: size before/after and the quality change."""
    headers = ["file", "task", "fp32 MB", "int8 MB", "ratio", "metric", "fp32", "int8", "top-1 agree", "max |dlogit|"]
    rows = [
        [r.source.name, r.task, r.bytes_before / 2**20, r.bytes_after / 2**20, r.size_ratio, r.metric or "-",
         "-" if r.before is None else r.before, "-" if r.after is None else r.after,
         "-" if r.top1_agreement is None else r.top1_agreement,
         "-" if r.max_abs_logit_diff is None else r.max_abs_logit_diff]
        for r in results
    ]
    return table(headers, rows, markdown)
