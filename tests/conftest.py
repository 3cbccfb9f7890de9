"""Shared fixtures. Keras' backend is fixed per process: this suite runs Keras on TensorFlow unless
KERAS_BACKEND says otherwise; the other Keras backends are checked in subprocesses (test_keras_backends.py)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from llmdual.api import build  # noqa: E402
from llmdual.core.config import Config  # noqa: E402
from llmdual.core.weights import init_weights  # noqa: E402

BACKENDS = ("torch", "keras")
TASKS = ("lm", "classifier")


@pytest.fixture
def tiny() -> Config:
    return Config.preset("tiny")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
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
    """Both tasks in both backends with ``export_weights``: the models every export test exports and compares."""
    return {(b, t): build(config, b, t, weights=export_weights(config, t)) for b in BACKENDS for t in TASKS}
