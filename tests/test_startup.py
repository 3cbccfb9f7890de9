"""Importing llmdual and building a Keras model prints no TensorFlow start-up banner unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = "import llmdual; llmdual.build(llmdual.Config.preset('tiny'), 'keras')"
BANNER = ("oneDNN custom operations", "absl::InitializeLog", "cpu_feature_guard")


def run(env_changes: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env={**env, **env_changes}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_no_banner_by_default():
    stderr = run({})
    assert not any(line in stderr for line in BANNER), stderr


def test_banner_shown_when_the_user_asks_for_tensorflow_logs():
    """The test can fail: with TF_CPP_MIN_LOG_LEVEL=0 TensorFlow's own start-up lines come through."""
    assert "oneDNN custom operations" in run({"TF_CPP_MIN_LOG_LEVEL": "0"})
