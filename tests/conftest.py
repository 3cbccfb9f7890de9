"""Shared fixtures, and the backends a test runs on: every list of backends comes from the registry
(``llmdual.contract``), by the capability the test exercises, never from names written here. The ``backend``
fixture runs a test on every backend (the ``forward`` capability); a test of another capability parametrises
``backend`` by ``backends(capability)``, or its module overrides the fixture.

Keras' backend is fixed per process: this suite runs Keras on TensorFlow unless KERAS_BACKEND says otherwise;
the other Keras backends are checked in subprocesses (test_keras_backends.py)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest

import llmdual
from llmdual.api import build
from llmdual.contract import backends, info
from llmdual.core.config import Config
from llmdual.core.weights import init_weights

TASKS = ("lm", "classifier")


def framework_backends() -> list[str]:
    """The backends built on a deep-learning framework (autodiff, an optimising compiler, model classes and modules
    that mirror each other): those offering gradients. Tests of what such a framework does beyond the capability
    protocols (a compiled decoding step, the models' own methods and layers) run on these."""
    return backends("gradients")


def other_hosts(name: str) -> list[str]:
    """The libraries backend ``name``'s framework can run on besides this process's default (Keras' JAX and
    torch), from the registry; each is checked in a subprocess."""
    host = info(name).host
    return [] if host is None else [library for library in host[2] if library != host[1]]


def logits_dtype(name: str) -> type:
    """The dtype of backend ``name``'s logits: float64 for the reference, float32 for the others."""
    return np.float64 if info(name).offers("reference") else np.float32


@pytest.fixture
def tiny() -> Config:
    return Config.preset("tiny")


@pytest.fixture(params=backends("forward"))
def backend(request) -> str:
    """Every registered backend: for tests of running a model (build, weights, forward) and nothing more."""
    return request.param


@pytest.fixture(params=TASKS)
def task(request) -> str:
    return request.param


@pytest.fixture
def ids(tiny) -> np.ndarray:
    return np.random.default_rng(0).integers(0, tiny.vocab_size, (2, 12), dtype=np.int64)


def export_weights(config: Config, task: str) -> dict[str, np.ndarray]:
    """The seed-0 initialization with matrices scaled up, so greedy decoding picks varied tokens."""
    return {k: v * 8 if v.ndim == 2 else v for k, v in init_weights(config, task, 0).items()}


@pytest.fixture(scope="session")
def config() -> Config:
    """The tiny preset, shared by the export tests."""
    return Config.preset("tiny")


@pytest.fixture(scope="session")
def models(config):
    """Both tasks in every backend that exports (to ONNX or natively) with ``export_weights``: the models every
    export test exports and compares."""
    exporting = [b for b in backends() if info(b).offers("onnx") or info(b).offers("native-export")]
    return {(b, t): build(config, b, t, weights=export_weights(config, t)) for b in exporting for t in TASKS}


SERVE_TEXT = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n", "class A:\n    pass\n"] * 20


@pytest.fixture(scope="module")
def serve_files(tmp_path_factory):
    """The server tests' model file, tokenizer file, model and tokenizer (the tokenizer fits the model)."""
    folder = tmp_path_factory.mktemp("serve")
    tok = llmdual.Tokenizer.train(SERVE_TEXT, vocab_size=300)
    model = llmdual.build(llmdual.Config.preset("tiny", vocab_size=tok.vocab_size), "torch", seed=0)
    return llmdual.save(model, folder / "m.safetensors"), tok.save(folder / "tokenizer.json"), model, tok
