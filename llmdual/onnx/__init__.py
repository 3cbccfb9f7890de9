"""ONNX: export either backend's model (verified against the native model before it is kept), int8
quantization, and onnxruntime sessions, metrics and a ``Decoder`` for ``llmdual.generate``."""

from llmdual.onnx.export import ExportResult, VerificationError, export_onnx, summary_table
from llmdual.onnx.quantize import QuantizeResult, quantize, quantize_table
from llmdual.onnx.runtime import OnnxDecoder, evaluate, logits, open_session, throughput

__all__ = [
    "ExportResult", "OnnxDecoder", "QuantizeResult", "VerificationError", "evaluate", "export_onnx", "logits",
    "open_session", "quantize", "quantize_table", "summary_table", "throughput",
]
