"""The transport under hostile clients, against a real server (issue 12): forwarding headers
that only [auth] trusted_proxies may make count (finding 2)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn

from server.cli.serve import listen, transport
from server.settings import Settings
from tests.auth.test_guard import INFER
from tests.live import live_server, server_log, test_auth, wait_until
from tests.live.test_auth import create

repo = test_auth.repo
env = test_auth.env

TIMEOUT = 20.0
"""Seconds to wait for the server: generous, since CI runs on two loaded cores; a test that
waits this long has failed."""


# ---- forwarding headers (finding 2) ------------------------------------------------------


def infer(url: str, token: str, forwarded: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    return httpx.post(f"{url}/v2/models/tiny/infer", json=INFER, headers=headers)


def usage(env: dict[str, str], rows: int) -> list[tuple[int, str]]:
    """(status, client) of the usage log's rows, once it holds `rows` of them."""
    database = Path(env["CINFER_AUTH__DATABASE"])

    def read() -> list[tuple[int, str]]:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
            found = conn.execute("SELECT status, client FROM usage_log ORDER BY rowid").fetchall()
        return [(int(status), str(client)) for status, client in found]

    return wait_until(lambda: len(found := read()) >= rows and found, f"{rows} usage rows")


def test_forwarded_for_from_a_peer_not_trusted_is_ignored(repo: Path, env: dict[str, str]) -> None:
    lan = create(env, "--name", "lan", "--ips", "10.0.0.0/8")
    anywhere = create(env, "--name", "anywhere")
    with live_server(repo, env=env) as (url, _):
        assert infer(url, lan).status_code == 403
        # uvicorn's own proxy handling believed a local peer's header: the restriction fell.
        response = infer(url, lan, "10.1.2.3")
        assert response.status_code == 403
        assert response.json() == {
            "error": "API token 'lan' may not be used from address 127.0.0.1"
        }
        # Not even parsed: entries that are no address are nobody's business but a proxy's.
        response = infer(url, lan, "<script>")
        assert response.json()["error"].endswith("from address 127.0.0.1")
        assert infer(url, anywhere, "' OR 1=1 --").status_code == 200
        assert usage(env, 4) == [(403, "127.0.0.1")] * 3 + [(200, "127.0.0.1")]


def test_forwarded_for_from_a_trusted_proxy_names_the_client(
    repo: Path, env: dict[str, str]
) -> None:
    lan = create(env, "--name", "lan", "--ips", "10.0.0.0/8")
    proxied = {**env, "CINFER_AUTH__TRUSTED_PROXIES": '["127.0.0.1"]'}
    with live_server(repo, env=proxied) as (url, _):
        assert infer(url, lan, "10.1.2.3").status_code == 200
        # The right-most entry is the one the proxy saw; those left of it, the client's claims.
        assert infer(url, lan, "192.0.2.1, 10.1.2.3").status_code == 200
        response = infer(url, lan, "10.1.2.3, 192.0.2.1")
        assert response.json()["error"].endswith("from address 192.0.2.1")
        for entry in ["<script>", "' OR 1=1 --"]:
            response = infer(url, lan, f"10.1.2.3, {entry}")
            assert response.status_code == 400
            assert entry in response.json()["error"]
            assert "from proxy 127.0.0.1 is not an IP address" in response.json()["error"]
        # A refused header is logged against the peer, never as its text.
        assert usage(env, 5) == [
            (200, "10.1.2.3"),
            (200, "10.1.2.3"),
            (403, "192.0.2.1"),
            (400, "127.0.0.1"),
            (400, "127.0.0.1"),
        ]


def test_without_auth_the_access_log_names_the_peer(repo: Path) -> None:
    logged = {"CINFER_SERVER__ACCESS_LOG": "json"}
    with live_server(repo, env=logged) as (url, _):
        headers = {"X-Forwarded-For": "10.1.2.3", "X-Request-ID": "forged-for"}
        assert httpx.get(f"{url}/v2/health/ready", headers=headers).status_code == 200
        line = wait_until(
            lambda: next((ln for ln in server_log(repo).splitlines() if "forged-for" in ln), None),
            "the access log line",
        )
    entry = orjson.loads(line[line.index("{") :])
    assert entry["client"].startswith("127.0.0.1:"), entry


def test_forwarding_headers_change_neither_client_nor_scheme() -> None:
    """uvicorn as `cinfer serve` configures it, serving an app that shows its scope."""

    async def show_scope(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        host = dict(scope["headers"])[b"host"].decode()
        body = orjson.dumps({"client": scope["client"], "scheme": scope["scheme"], "host": host})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    with listen("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
        running = uvicorn.Server(transport(Settings(), show_scope, port))
        thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]})
        thread.start()
        try:
            wait_until(lambda: running.started, "uvicorn to start")
            forged = {
                "X-Forwarded-For": "10.1.2.3",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil.example",
                "Forwarded": "for=10.1.2.3;proto=https;host=evil.example",
            }
            shown = httpx.get(f"http://127.0.0.1:{port}/", headers=forged).json()
            assert (shown["scheme"], shown["host"]) == ("http", f"127.0.0.1:{port}")
            address, client_port = shown["client"]
            assert address == "127.0.0.1" and client_port > 0  # uvicorn's rewrite gave port 0
        finally:
            running.should_exit = True
            thread.join(TIMEOUT)
