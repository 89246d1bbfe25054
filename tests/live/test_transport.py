"""The transport under hostile clients, against a real server (issue 12, findings 2, 5, 9):
forwarding headers that only [auth] trusted_proxies may make count, request heads capped in
bytes and headers before they are buffered, connections that must finish their heads in
time, and a cap on open connections."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from server.cli.serve import listen, transport
from server.settings import Settings
from tests.auth.test_guard import INFER
from tests.live import live_server, server_log, test_auth, wait_until
from tests.live.test_auth import create

repo = test_auth.repo
env = test_auth.env

TIMEOUT = 20.0
"""Seconds a socket waits for the server: generous, since CI runs on two loaded cores; a test
that waits this long has failed."""
READY = "GET /v2/health/ready HTTP/1.1\r\nHost: cinfer\r\n"


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
        assert usage(env, 3) == [(200, "10.1.2.3"), (200, "10.1.2.3"), (403, "192.0.2.1")]
        # A refused header is counted against the peer (before any token is looked at: with
        # the tokenless refusals), never as its text.
        database = Path(env["CINFER_AUTH__DATABASE"])

        def refusals() -> list[tuple[str, int, int]]:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
                return conn.execute("SELECT client, status, requests FROM refusals").fetchall()

        wait_until(lambda: refusals() == [("127.0.0.1", 400, 2)], "both refusals counted")


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


@contextlib.contextmanager
def uvicorn_serving(app: Any) -> Iterator[int]:
    """uvicorn as `cinfer serve` configures it (our protocol), serving `app` on a free port
    in a thread; yields the port."""
    with listen("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
        running = uvicorn.Server(transport(Settings(), app, port))
        thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]})
        thread.start()
        try:
            wait_until(lambda: running.started, "uvicorn to start")
            yield port
        finally:
            running.should_exit = True
            thread.join(TIMEOUT)


async def lifespan(receive: Any, send: Any) -> None:
    """The ASGI lifespan of an app with nothing to start."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


def test_forwarding_headers_change_neither_client_nor_scheme() -> None:
    """uvicorn as `cinfer serve` configures it, serving an app that shows its scope."""

    async def show_scope(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        host = dict(scope["headers"])[b"host"].decode()
        body = orjson.dumps({"client": scope["client"], "scheme": scope["scheme"], "host": host})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    with uvicorn_serving(show_scope) as port:
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


# ---- raw connections ---------------------------------------------------------------------


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=TIMEOUT)


def until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (a reset after its answer, for
    bytes it left unread, counts as closed). Times out if it never does."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def answer(data: bytes) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body of one raw HTTP response."""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, orjson.loads(body) if body else None


def one_response(sock: socket.socket) -> bytes:
    """One whole response (by its Content-Length) from a connection kept alive."""
    data = b""
    while True:
        head, blank, body = data.partition(b"\r\n\r\n")
        if blank and len(body) >= int(answer(head + blank)[1]["content-length"]):
            return data
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk


def exchange(url: str, request: bytes) -> tuple[int, dict[str, str], Any]:
    with connect(url) as sock:
        sock.sendall(request)
        return answer(until_closed(sock))


def send_until_refused(url: str, head: bytes, total: int) -> tuple[int, bytes]:
    """Send `head` and then filler header bytes up to `total`, stopping when the server
    closes; (bytes sent, what the server answered)."""
    chunk = b"a" * 65536
    sent = 0
    with connect(url) as sock:
        try:
            sock.sendall(head)
            while sent < total:
                sent += sock.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return sent, until_closed(sock)


def server_connections(port: int) -> int:
    """Connections the server on `port` still holds (its side ESTABLISHED or CLOSE_WAIT),
    from /proc/net/tcp: 0 once it has let go of every one."""
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, state = fields[1], fields[3]
                if int(local.rsplit(":", 1)[1], 16) == port and state in ("01", "08"):
                    held += 1
    return held


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A server with the default limits: (URL, pid)."""
    root = tmp_path_factory.mktemp("defaults") / "models"
    root.mkdir()
    with live_server(root) as (url, proc):
        yield url, proc.pid


# ---- request heads (finding 5) -----------------------------------------------------------


def test_a_head_past_max_header_bytes_is_answered_431_and_closed(
    default_server: tuple[str, int],
) -> None:
    url, _ = default_server
    bystander = http.client.HTTPConnection(url.removeprefix("http://"), timeout=TIMEOUT)
    bystander.request("GET", "/v2/health/ready")
    assert bystander.getresponse().read() == b'{"ready":true}'

    _, data = send_until_refused(url, f"{READY}X-Big: ".encode(), 1 << 20)
    status, headers, body = answer(data)
    assert status == 431
    assert body == {"error": "request headers exceed max_header_bytes (65536 bytes)"}
    assert headers["connection"] == "close"

    # The connection kept alive beside it, and new ones, are served as before.
    bystander.request("GET", "/v2/health/ready")
    assert bystander.getresponse().status == 200
    bystander.close()
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200


def test_more_than_max_headers_are_answered_431(default_server: tuple[str, int]) -> None:
    url, _ = default_server

    def request(headers: int) -> bytes:  # Host, Connection and `headers` more
        extra = "".join(f"h{i}: v\r\n" for i in range(headers))
        return f"{READY}{extra}Connection: close\r\n\r\n".encode()

    status, _, body = exchange(url, request(98))
    assert status == 200 and body == {"ready": True}
    for count in (99, 10_000):  # 10,000 short ones fit in max_header_bytes
        status, headers, body = exchange(url, request(count))
        assert status == 431, count
        assert body == {"error": "more than max_headers (100) request headers"}
        assert headers["connection"] == "close"


def test_huge_heads_do_not_grow_the_server(default_server: tuple[str, int]) -> None:
    """Five connections sending 50 MB of headers each: each is cut off after the limit, and
    the server's resident memory stays where it was."""
    url, pid = default_server
    total = 50 << 20
    before = rss_bytes(pid)
    peak = before
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        attacks = [
            pool.submit(send_until_refused, url, f"{READY}X-Big: ".encode(), total)
            for _ in range(5)
        ]
        while not all(a.done() for a in attacks):
            peak = max(peak, rss_bytes(pid))
            time.sleep(0.005)
        results = [a.result() for a in attacks]
    for sent, data in results:
        # Kernel buffers take a few MB (the server reads 256 KiB at most past the limit).
        assert sent < total // 2, f"{sent} bytes went through before the server closed"
        assert not data or answer(data)[0] == 431
    assert peak - before < 50 << 20, f"resident memory grew from {before} to {peak} bytes"
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200


# ---- slow and idle connections (finding 9) ------------------------------------------------


@pytest.fixture(scope="module")
def impatient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("impatient") / "models"
    root.mkdir()
    limits = {"CINFER_SERVER__HEADER_TIMEOUT_S": "0.5", "CINFER_SERVER__KEEP_ALIVE_S": "0.5"}
    with live_server(root, env=limits) as (url, _):
        yield url


def test_a_connection_that_finishes_no_head_is_closed(impatient_server: str) -> None:
    url = impatient_server
    timed_out = {"error": "request headers not received within header_timeout_s (0.5 s)"}
    with connect(url) as silent:
        assert until_closed(silent) == b""  # closed without an answer
    for partial in [b"GET /v2/hea", READY.encode()]:  # half a request line; no blank line
        with connect(url) as sock:
            sock.sendall(partial)
            status, headers, body = answer(until_closed(sock))
            assert (status, body) == (408, timed_out)
            assert headers["connection"] == "close"
    # A head sent in pieces, each well within the time, is served.
    with connect(url) as sock:
        for piece in [
            b"GET /v2/health/re",
            b"ady HTTP/1.1\r\nHost: x\r\n",
            b"Connection: close\r\n\r\n",
        ]:
            sock.sendall(piece)
        assert answer(until_closed(sock))[0] == 200


def test_many_silent_and_half_open_connections_are_all_closed(impatient_server: str) -> None:
    sockets = [connect(impatient_server) for _ in range(200)]
    try:
        for sock in sockets[::2]:
            sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for i, sock in enumerate(sockets):
            data = until_closed(sock)
            if i % 2:
                assert data == b"", data
            else:
                assert answer(data)[0] == 408
    finally:
        for sock in sockets:
            sock.close()


def test_idle_kept_alive_connections_are_closed(impatient_server: str) -> None:
    for after in [b"", b"\r\n"]:  # a blank line between requests stopped uvicorn's timer
        with connect(impatient_server) as sock:
            sock.sendall(READY.encode() + b"\r\n")
            data = one_response(sock)
            assert answer(data)[0] == 200 and b"connection: close" not in data
            start = time.monotonic()
            sock.sendall(after)
            assert until_closed(sock) == b""
            # keep_alive_s is 0.5, uvicorn's default 5 (then header_timeout_s, 0.5 too)
            assert time.monotonic() - start < 4.0


# ---- open connections (finding 9) ---------------------------------------------------------


def test_past_max_connections_new_ones_are_answered_503(repo: Path) -> None:
    limits = {"CINFER_SERVER__MAX_CONNECTIONS": "5", "CINFER_SERVER__KEEP_ALIVE_S": "60"}
    with live_server(repo, env=limits) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        wait_until(lambda: server_connections(port) == 0, "the readiness checks' connections")
        held = [http.client.HTTPConnection(f"127.0.0.1:{port}", timeout=TIMEOUT) for _ in range(5)]

        def ready(conn: http.client.HTTPConnection) -> int:
            conn.request("GET", "/v2/health/ready")
            response = conn.getresponse()
            response.read()
            return response.status

        assert [ready(conn) for conn in held] == [200] * 5
        busy = {"error": "the server has max_connections (5) connections open"}
        status, headers, body = exchange(url, READY.encode() + b"\r\n")
        assert (status, body) == (503, busy)
        assert headers["connection"] == "close" and headers["retry-after"] == "1"
        # A WebSocket handshake is refused the same way, before it reaches the app.
        handshake = (
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        status, _, body = exchange(url, handshake.encode())
        assert (status, body) == (503, busy)
        # A flood of refused connections is not a flood of log lines.
        for _ in range(30):
            assert exchange(url, READY.encode() + b"\r\n")[0] == 503
        assert server_log(repo).count("connections open") == 1
        # The connections served before are still served.
        assert [ready(conn) for conn in held] == [200] * 5
        for conn in held:
            conn.close()
        wait_until(lambda: server_connections(port) == 0, "the server to let go of them")
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200


# ---- one send() per response -------------------------------------------------------------


def test_a_head_waits_for_its_body_only_within_the_turn_of_the_loop() -> None:
    """protocol.ResponseWriter sends a response's head with its body in one write; a head
    whose body is late (a stream), a HEAD answer and a 100 Continue still go out at once."""
    release = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        path = scope["path"]
        if path == "/echo":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(body)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while not release.is_set():  # the head must have reached the client by now
                await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b"late", "more_body": False})
        else:  # HEAD: a head and no body write
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    with uvicorn_serving(app) as port:
        url = f"http://127.0.0.1:{port}"
        with connect(url) as client:
            client.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            head = client.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
            release.set()
            rest = client.recv(65536)
            assert b"late" in rest
            client.sendall(b"HEAD /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(65536).startswith(b"HTTP/1.1 204 No Content\r\n")
            client.sendall(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            assert client.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
            client.sendall(b"hello")
            status, headers, _ = answer(one_response(client).replace(b"hello", b"{}"))
            assert status == 200 and headers["content-length"] == "5"
