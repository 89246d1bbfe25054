"""The real `cinfer` on a port that is taken: it stops before loading any model (finding 9)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests import onnx_models
from tests.live import ROOT


def test_a_taken_port_fails_before_any_model_is_loaded(tmp_path: Path) -> None:
    root = tmp_path / "models"
    onnx_models.copy_samples(root)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "server", "--repository", str(root), "--port", str(port)],
            cwd=ROOT,
            env={
                **os.environ,
                "CINFER_AUTH__ENABLED": "false",
                "CINFER_JOBS__ENABLED": "false",  # no jobs database beside config.toml
                "CINFER_SERVER__LOG_LEVEL": "debug",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 3, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr
    # "model iris version 1: LOADING -> READY" is what a start that loads logs
    # (tests/cli/test_cli.py asserts it); here no model may even begin to load.
    assert "LOADING" not in result.stderr and "iris" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
