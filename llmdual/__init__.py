"""llmdual: the same decoder-only transformer (GPT-2 and the Llama family) in PyTorch and Keras 3, with shared
weights and proven parity."""

from llmdual.api import build, forward, get_weights, load, save, set_weights
from llmdual.contract import backend_name, backend_of
from llmdual.core.config import Config
from llmdual.core.recipe import TrainConfig
from llmdual.core.tokenizer import Tokenizer
from llmdual.core.weights import from_hf_gpt2, init_weights, to_hf_gpt2
from llmdual.evaluate import evaluate
from llmdual.export import export
from llmdual.generate import generate
from llmdual.hf import from_hf, to_hf
from llmdual.lora import add_lora, load_lora, merge_lora, save_lora, save_lora_peft
from llmdual.quantize import quantize
from llmdual.training import train

__version__ = "0.1.0"


def __getattr__(name: str):
    """``export_onnx`` is imported on first use: ONNX support is an optional extra (``llmdual[onnx]``)."""
    if name == "export_onnx":
        from llmdual.onnx import export_onnx

        return export_onnx
    raise AttributeError(f"module 'llmdual' has no attribute {name!r}")


__all__ = [
    "Config",
    "Tokenizer",
    "TrainConfig",
    "add_lora",
    "backend_name",
    "backend_of",
    "build",
    "evaluate",
    "export",
    "export_onnx",
    "forward",
    "from_hf",
    "from_hf_gpt2",
    "generate",
    "get_weights",
    "init_weights",
    "load",
    "load_lora",
    "merge_lora",
    "quantize",
    "save",
    "save_lora",
    "save_lora_peft",
    "set_weights",
    "to_hf",
    "to_hf_gpt2",
    "train",
]
