"""A real `python -m server` process on a free port, for tests that use real clients."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
"""Debian's chromium, which the browser tests drive through Playwright (make test installs it)."""

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def live_server(
    repository: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Start the server over `repository`; yields (base URL, process) once it is ready.

    Authentication, the console, async jobs and gRPC are off unless `env` sets
    ``CINFER_AUTH__ENABLED``, ``CINFER_CONSOLE__ENABLED``, ``CINFER_JOBS__ENABLED`` or
    ``CINFER_GRPC__ENABLED`` (the shipped config.toml turns them on, and tests that are not
    about them should not need a token, write a database beside config.toml, nor take port
    8001).
    """
    port = free_port()
    log_path = repository.parent / f"server-{port}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "--repository",
            str(repository),
            "--port",
            str(port),
            *args,
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "CINFER_AUTH__ENABLED": "false",
            "CINFER_CONSOLE__ENABLED": "false",
            "CINFER_JOBS__ENABLED": "false",
            "CINFER_GRPC__ENABLED": "false",
            **(env or {}),
        },
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout}s:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def server_log(repository: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(repository.parent.glob("server-*.log")))


def wait_until(
    condition: Callable[[], T], what: str, timeout: float = 30.0, interval: float = 0.02
) -> T:
    """Poll `condition` until it returns something truthy (returned); fail after `timeout`.

    Deadlines are generous: CI runs on two loaded cores."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def unread_bytes(port: int, client_ports: set[int]) -> int | None:
    """Bytes the server has not read yet from the connections of `client_ports` (None until
    it holds them all), from /proc/net/tcp: 0 means the server has read every request."""
    pending, seen = 0, set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                queues = fields[4]
                if int(local.rsplit(":", 1)[1], 16) != port or state != "01":
                    continue
                peer = int(remote.rsplit(":", 1)[1], 16)
                if peer in client_ports:
                    seen.add(peer)
                    pending += int(queues.split(":")[1], 16)
    return pending if seen == client_ports else None


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """The apt chromium, launched through Playwright (no browser download is possible here)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()
