"""Native deployment formats (``torch-export``, ``aoti``, ``saved-model``): export verified in a fresh process
before it is kept, loading, and a ``Decoder`` for ``llmdual.generate`` over a loaded export."""

from llmdual.native.export import FORMATS, NativeResult, export_native, native_table, verify_native
from llmdual.native.runtime import Artefact, NativeDecoder, load

__all__ = ["FORMATS", "Artefact", "NativeDecoder", "NativeResult", "export_native", "load", "native_table",
           "verify_native"]
