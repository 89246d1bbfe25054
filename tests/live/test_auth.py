"""API tokens end to end: the real `cinfer tokens` CLI and a real server on one SQLite file."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from tests import onnx_models
from tests.auth.test_guard import INFER, TINY
from tests.live import ROOT, live_server, server_log


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    onnx_models.model_folder(root, "tiny", TINY, {1: onnx_models.dense(tmp_path / "model.onnx")})
    return root


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"CINFER_AUTH__ENABLED": "true", "CINFER_AUTH__DATABASE": str(tmp_path / "db" / "c.db")}


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "server", "tokens", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def create(env: dict[str, str], *args: str) -> str:
    token = cli(env, "create", *args).stdout.strip()
    assert token.startswith("cinfer_"), token
    return token


def secret(token: str) -> str:
    return token.split("_", 2)[2]


def infer(url: str, token: str | None, model: str = "tiny") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(f"{url}/v2/models/{model}/infer", json=INFER, headers=headers)
    assert response.status_code < 500, response.text
    return response


def within(seconds: float, condition: Callable[[], bool]) -> float:
    """How long until `condition()` holds; fails past `seconds`."""
    start = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - start
        assert elapsed < seconds, f"not within {seconds}s"
        time.sleep(0.01)
    return time.monotonic() - start


def stored(database: Path) -> tuple[int, int]:
    """(requests counted for the one token, usage log rows) as written to the file."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        (used,) = conn.execute("SELECT used FROM tokens").fetchone()
        (rows,) = conn.execute("SELECT count(*) FROM usage_log").fetchone()
    return int(used), int(rows)


def test_cli_tokens_guard_a_running_server(repo: Path, env: dict[str, str], tmp_path: Path) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    with live_server(repo, env=env) as (url, _):
        # Started with an empty database: the log says how to make the first token.
        assert "cinfer tokens create --name admin --scope admin,read,infer" in server_log(repo)
        assert infer(url, None).status_code == 401
        runner = create(env, "--name", "runner", "--models", "ti*", "--remark", "café'; --")
        reader = create(env, "--name", "reader", "--scope", "read")
        # Made by another process and used at once: an unknown token makes the server look
        # for new tokens before refusing it.
        assert infer(url, runner).status_code == 200
        assert infer(url, reader).status_code == 403
        assert infer(url, runner, "iris").json() == {
            "error": "API token 'runner' may not use model 'iris'"
        }
        response = infer(url, None)
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith(
            "Bearer"
        )

        # tritonclient sends the token as a header.
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        tensor = triton.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(np.full((1, 16), 0.5, np.float32), binary_data=True)
        result = client.infer("tiny", [tensor], headers={"Authorization": f"Bearer {runner}"})
        assert result.as_numpy("OUTPUT0").shape == (1, 16)
        assert client.is_model_ready("tiny", headers={"Authorization": f"Bearer {reader}"})
        with pytest.raises(InferenceServerException, match="needs an API token"):
            client.infer("tiny", [tensor])
        client.close()

        # Hostile headers: clean 4xx, and the server lives on.
        huge = {"Authorization": "Bearer " + "x" * 60_000}
        assert 400 <= httpx.post(f"{url}/v2/models/tiny/infer", headers=huge).status_code < 500
        for value in [
            "Bearer cinfer_'; DROP TABLE tokens; --",
            "Bearer ../../etc/passwd",
            "Bearer 🚀",
        ]:
            raw = value.encode()
            response = httpx.post(f"{url}/v2/models/tiny/infer", headers=[(b"Authorization", raw)])
            assert response.status_code == 401
        assert _raw_request(url, b"Authorization: Bearer \xff\xfe\r\n").startswith(b"HTTP/1.1 401")

        # Pause, resume and revoke from the CLI while the server runs.
        cli(env, "pause", "runner")
        assert within(1.0, lambda: infer(url, runner).status_code == 401) < 1.0
        assert infer(url, runner).json()["error"] == "API token 'runner' is paused"
        cli(env, "resume", "runner")
        within(1.0, lambda: infer(url, runner).status_code == 200)
        cli(env, "revoke", "runner")
        within(1.0, lambda: infer(url, runner).status_code == 401)
        assert infer(url, runner).json()["error"] == "API token 'runner' was revoked"
        refused = cli(env, "resume", "runner", check=False)
        assert refused.returncode == 1 and "revocation is permanent" in refused.stderr

        listing = cli(env, "list").stdout + cli(env, "list", "--json").stdout
        shown = orjson.loads(cli(env, "show", "reader", "--json").stdout)
        assert shown["scopes"] == ["read"] and "token" not in shown

    # Never a secret in the database files, the server log or the CLI's listings.
    files = [p for p in (tmp_path / "db").iterdir()]
    assert {p.name for p in files} >= {"c.db"}
    for token in (runner, reader):
        for path in files:
            assert secret(token).encode() not in path.read_bytes(), path
        assert secret(token) not in server_log(repo)
        assert secret(token) not in listing


def _raw_request(url: str, header: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            + header
            + b"Connection: close\r\n\r\n"
        )
        return sock.recv(65536)


def test_usage_counts_survive_a_restart_and_a_kill_9(
    repo: Path, env: dict[str, str], tmp_path: Path
) -> None:
    database = Path(env["CINFER_AUTH__DATABASE"])
    token = create(env, "--name", "metered", "--monthly-quota", "30")
    with live_server(repo, env=env) as (url, _):
        assert all(infer(url, token).status_code == 200 for _ in range(20))
    # SIGTERM: everything is written at shutdown.
    assert orjson.loads(cli(env, "show", "metered", "--json").stdout)["used_this_month"] == 20

    with live_server(repo, env=env) as (url, proc):
        assert all(infer(url, token).status_code == 200 for _ in range(10))
        response = infer(url, token)  # the quota counts what the first run used
        assert response.status_code == 429 and "monthly quota of 30 requests" in response.text
        # Counts reach the file within about a second of the request ...
        assert within(3.0, lambda: stored(database) == (30, 31)) < 2.0
        proc.kill()  # ... so a kill -9 loses at most that
        proc.wait()

    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT used FROM tokens").fetchone() == (30,)
        assert conn.execute("SELECT count(*) FROM usage_log").fetchone() == (31,)
    assert orjson.loads(cli(env, "show", "metered", "--json").stdout)["used_this_month"] == 30


def test_without_auth_a_public_address_is_warned_about(repo: Path, tmp_path: Path) -> None:
    off = {"CINFER_AUTH__ENABLED": "false", "CINFER_AUTH__DATABASE": str(tmp_path / "unused.db")}
    with live_server(repo, "--host", "0.0.0.0", env=off) as (url, _):
        assert infer(url, None).status_code == 200
    assert "authentication is off ([auth] enabled = false) and the server listens on 0.0.0.0" in (
        server_log(repo)
    )
    assert not (tmp_path / "unused.db").exists()
