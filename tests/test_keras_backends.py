"""Keras' backend is fixed per process, so the JAX and torch backends are checked in subprocesses."""

import json
import os
import subprocess
import sys

import pytest
from conftest import other_hosts

SCRIPT = """
import json, sys
import keras
from llmdual import parity
from llmdual.core.config import Config
reports = [parity.run(Config.preset("tiny"), task) for task in ("lm", "classifier")]
json.dump({"backend": keras.backend.backend(), "reports": [r.to_dict() for r in reports]}, sys.stdout)
"""


@pytest.mark.parametrize("keras_backend", other_hosts("keras"))
def test_parity_on_other_keras_backends(keras_backend):
    env = {**os.environ, "KERAS_BACKEND": keras_backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == keras_backend
    for report in result["reports"]:
        failed = [c for c in report["checks"] if not c["passed"]]
        assert report["passed"] and not failed, failed
        assert len(report["checks"]) >= 9
