"""What the server runs: a model file (or an ONNX export) on one engine, with an optional tokenizer."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from llmdual.contract import runtimes, targets
from llmdual.core.config import Config
from llmdual.core.tokenizer import Tokenizer


@dataclass
class Engine:
    """A loaded model ready for ``llmdual.generate``: ``target`` is a native model or an ``OnnxDecoder``."""

    name: str
    model_id: str
    config: Config
    target: Any
    tokenizer: Tokenizer | None = None

    @property
    def eot_id(self) -> int | None:
        """End-of-text id (the tokenizer's), or None: then generation runs to ``max_tokens``."""
        return None if self.tokenizer is None else self.tokenizer.eot_id

    @cached_property
    def max_prompt_chars(self) -> int | None:
        """The longest text prompt that could still fit the context, or None without a tokenizer: no token spans
        more bytes than the longest one's decoding, and every character is at least one byte, so longer text
        is refused before it is tokenised."""
        if self.tokenizer is None:
            return None
        longest = max(len(self.tokenizer.decode([i]).encode("utf-8")) for i in range(self.tokenizer.vocab_size))
        return self.config.max_seq_len * longest


def _onnx_target(checkpoint: Path) -> tuple[Config, Any]:
    """An ``OnnxDecoder`` on a KV-cache export: ``checkpoint`` itself if it is one, else a fresh export of it."""
    from llmdual.onnx import OnnxDecoder, export_onnx

    if checkpoint.suffix != ".onnx":
        from llmdual.api import load

        model = load(checkpoint, "torch")
        if model.task != "lm":
            raise ValueError(f"{checkpoint} holds a {model.task!r} model; the server generates with 'lm' models")
        folder = tempfile.TemporaryDirectory(prefix="llmdual-serve-")  # removed when the decoder goes
        checkpoint = export_onnx(model, Path(folder.name) / "decoder.onnx", kv_cache=True).path
        decoder = OnnxDecoder(checkpoint)
        decoder.export_folder = folder
    else:
        decoder = OnnxDecoder(checkpoint)
    if not decoder.use_cache:
        raise ValueError(f"{checkpoint} is an ONNX export without a KV cache; export it with kv_cache=True")
    return decoder.info.config, decoder


def load_engine(checkpoint: str | Path, engine: str = "torch", tokenizer: str | Path | None = None,
                model_id: str | None = None) -> Engine:
    """Load ``checkpoint`` (a model file; for ``onnx`` also a KV-cache ``.onnx`` export) on ``engine``."""
    if engine not in targets("decoding"):
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(targets('decoding'))}")
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if engine in runtimes():
        config, target = _onnx_target(path)
    else:
        from llmdual.api import load

        target = load(path, engine)
        if target.task != "lm":
            raise ValueError(f"{path} holds a {target.task!r} model; the server generates with 'lm' models")
        config = target.config
    tok = None
    if tokenizer is not None:
        tok = Tokenizer.load(tokenizer)
        try:
            tok.check_fits(config.vocab_size, f"model {path}")
        except ValueError as err:
            raise ValueError(f"tokenizer {tokenizer}: {err}") from None
    return Engine(engine, model_id or path.stem, config, target, tok)
