"""NumPy backend: GPT-2 LM and classifier in float64, the reference every parity table reports against. It
implements the ``forward`` (``Model``) and ``decoding`` (``Decodes``) protocols of ``llmdual.contract``, and
nothing that trains, adapts, quantizes or exports; mirrors ``llmdual/backends/torch/__init__.py``."""

from __future__ import annotations

from llmdual.backends.numpy.api import NAME, build, forward, intermediates, weight_bytes
from llmdual.backends.numpy.decode import decoder
from llmdual.backends.numpy.weights import get_weights, set_weights

__all__ = ["NAME", "build", "decoder", "forward", "get_weights", "intermediates", "set_weights", "weight_bytes"]
