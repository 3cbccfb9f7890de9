"""Keras' own deployment formats, with dynamic batch and sequence axes: a TensorFlow SavedModel (a folder) and
LiteRT (a folder holding ``model.tflite``; TensorFlow's LiteRT converter and interpreter). Mirrors
``llmdual/backends/torch/native.py``; ``llmdual.native.export`` checks the format, verifies the export in a fresh
process and puts it in place."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from llmdual.backends.keras.export import outputs

if TYPE_CHECKING:
    from llmdual.core.signature import Signature

META_FILE = "llmdual.json"  # the export's metadata, beside saved_model.pb or model.tflite in the folder
TFLITE_FILE = "model.tflite"


def save(model: keras.Model, sig: Signature, example: dict[str, np.ndarray], path: str, format: str,
         metadata: dict[str, str]) -> None:
    """Write ``model`` at ``path`` as ``format`` with ``sig``'s inputs, outputs and dynamic axes; every axis the
    signature names is ``None`` (without an input signature Keras would fix them to the example's)."""
    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"{format} export needs Keras' TensorFlow backend; this process runs Keras on "
                         f"{keras.backend.backend()!r}: set KERAS_BACKEND=tensorflow")
    specs = [tf.TensorSpec([None if isinstance(a, str) else a for a in axes], sig.dtype(name), name=name)
             for name, axes in sig.inputs.items()]
    with warnings.catch_warnings():
        # Keras flags a softmax over one key (a single-token trace): correct here, where it is 1 by design.
        warnings.filterwarnings("ignore", message="You are using a softmax over axis")
        if sig.kv_cache:  # the decoder step is not the model's call: it gets an endpoint of its own
            archive = keras.export.ExportArchive()
            archive.track(model)
            archive.add_endpoint("serve", lambda *inputs: dict(zip(sig.outputs, outputs(model, True, list(inputs)))),
                                 input_signature=specs)
            archive.write_out(path, verbose=False)
        elif format == "litert":
            model.export(os.path.join(path, TFLITE_FILE), format="litert", input_signature=specs, verbose=False)
        else:
            model.export(path, format="tf_saved_model", input_signature=specs, verbose=False)
    Path(path, META_FILE).write_text(json.dumps(metadata))


def load(path: str, format: str) -> tuple[Callable[[dict[str, np.ndarray]], list[np.ndarray]], dict[str, str]]:
    """A runner over the export at ``path`` (feeds by input name in, outputs in signature order out) and the
    metadata it was saved with."""
    metadata = json.loads(Path(path, META_FILE).read_text())
    names, results = metadata["llmdual.inputs"].split(","), metadata["llmdual.outputs"].split(",")
    if format == "litert":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation in favour of the ai-edge-litert package
            runner = tf.lite.Interpreter(model_path=os.path.join(path, TFLITE_FILE)).get_signature_runner()

        def run_lite(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            out = runner(**{n: np.ascontiguousarray(feeds[n]) for n in names})
            return [np.asarray(v) for v in out.values()]  # one output: LiteRT exports the plain LM only

        return run_lite, metadata
    loaded = tf.saved_model.load(path)

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = loaded.serve(*(tf.constant(feeds[n]) for n in names))
        return [np.asarray(out[n]) for n in results] if isinstance(out, dict) else [np.asarray(out)]

    return run, metadata
