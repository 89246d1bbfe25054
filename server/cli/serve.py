"""`cinfer serve`: load the model repository and answer KServe v2 requests until stopped.

Exit codes: 0 after a clean stop, 2 for settings that cannot be used (a missing repository,
an unreadable token database), 3 when the server cannot start: the address is taken, or the
application's start-up failed (uvicorn's code for that).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .. import __version__, affinity
from ..errors import CinferError
from ..settings import Settings
from .config import LOG_LEVELS, config_option, configure_logging, load_settings

if TYPE_CHECKING:
    import uvicorn

    from ..http.asgi import ASGIApp

STARTUP_FAILURE = 3
"""uvicorn's exit code when it cannot start; a taken address gets the same one from us."""
BACKLOG = 2048
"""Connections the kernel queues before they are accepted: uvicorn's default."""

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("cinfer")


def serve_options(command: F) -> F:
    """The flags of `serve`; `cinfer` takes them too, since serve is its default command."""
    options = [
        config_option,
        click.option(
            "--repository",
            type=click.Path(file_okay=False, path_type=Path),
            metavar="DIR",
            help="Model repository folder (overrides [repository] path).",
        ),
        click.option(
            "--host", metavar="HOST", help="Address to listen on (overrides [server] host)."
        ),
        click.option(
            "--port", type=int, metavar="PORT", help="Port to listen on (overrides [server] port)."
        ),
        click.option(
            "--log-level",
            type=click.Choice(LOG_LEVELS),
            metavar="LEVEL",
            help=f"{', '.join(LOG_LEVELS)} (overrides [server] log_level).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command(short_help="Serve the model repository (the default command).")
@serve_options
def serve(
    config: Path | None,
    repository: Path | None,
    host: str | None,
    port: int | None,
    log_level: str | None,
) -> None:
    """Serve the model repository over KServe v2 REST and gRPC (the default command).

    Flags override CINFER_<SECTION>__<KEY> variables, which override the settings file.
    """
    configure_logging(log_level or "info")
    overrides: dict[str, dict[str, Any]] = {
        "server": {"host": host, "port": port, "log_level": log_level},
        "repository": {"path": repository},
    }
    settings = load_settings(config, overrides)
    configure_logging(settings.server.log_level)
    code = run(settings)
    if code:
        raise click.exceptions.Exit(code)


def run(settings: Settings) -> int:
    """Serve until SIGTERM / SIGINT; the exit code (module docstring)."""
    import uvicorn

    from ..auth.guard import Guard
    from ..auth.store import Database
    from ..cache import ResponseCache
    from ..dataplane import DataPlane
    from ..heap import Collector
    from ..http.app import create_app
    from ..reconciler import Reconciler

    root = settings.repository.path
    if not root.is_dir():
        log.error("model repository %s does not exist or is not a folder", root)
        return 2
    if settings.jobs.enabled:
        from ..jobs.store import JobStore

        try:  # open (and migrate) once here, as the token database below
            asyncio.run(JobStore(settings.jobs.database).open_and_close())
        except CinferError as exc:
            log.error("%s", exc)
            return 2
    guard = None
    if settings.auth.enabled:
        try:  # open (and migrate) once here, so a bad file is a clean error, not a traceback
            asyncio.run(Database(settings.auth.database).open_and_close())
        except CinferError as exc:
            log.error("%s", exc)
            return 2
        guard = Guard(Database(settings.auth.database), settings.auth)
    elif not is_loopback(settings.server.host):
        log.warning(
            "authentication is off ([auth] enabled = false) and the server listens on %s: "
            "anyone who can reach it can run and manage models",
            settings.server.host,
        )
    host = settings.server.host
    # Bound here, before the app exists: uvicorn binds only after the lifespan start-up, so a
    # taken port was reported after every model had loaded (finding 9).
    try:
        sock = listen(host, settings.server.port)
    except OSError as exc:
        log.error("cannot listen on %s: %s", address(host, settings.server.port), reason(exc))
        return STARTUP_FAILURE
    with sock:
        port = int(sock.getsockname()[1])  # the one the kernel chose when [server] port = 0
        repository = settings.repository
        # The event loop runs on this (main) thread: pin it before uvicorn starts the loop, so
        # the threads that hand it the GIL can share its core (affinity.py).
        core = affinity.python_core() if settings.server.pin_threads else None
        affinity.pin(core)
        if core is not None:
            log.info("event loop and engine threads on CPU %d (engines' own threads on all)", core)
        heap = Collector()  # the collector tuned for a server's heap (heap.py)
        heap.install()
        reconciler = Reconciler(root, core, heap, settings.server.max_image_pixels)
        cache = ResponseCache.of(settings.cache)  # for the models that enable it
        dataplane = DataPlane(reconciler, repository.mode, repository.settle_ms, cache)
        grpc = settings.grpc
        app = create_app(
            settings, dataplane, guard, grpc_port=grpc.port if grpc.enabled and grpc.port else None
        )
        log.info(
            "cinfer %s serving %s (%s mode) on http://%s",
            __version__,
            root,
            repository.mode,
            address(host, port),
        )
        server = uvicorn.Server(transport(settings, app, port))
        server.run(sockets=[sock])
        return 0 if server.started else 1


def transport(settings: Settings, app: ASGIApp, port: int) -> uvicorn.Config:
    """How uvicorn serves `app` on `port`: the connection policy of ``[server]``
    (server/http/protocol.py), and no header of the request's rewriting its client."""
    import uvicorn

    from ..http.protocol import ConnectionPolicy, HTTPProtocol

    server = settings.server
    return uvicorn.Config(
        app,
        host=server.host,
        port=port,
        backlog=BACKLOG,
        http=HTTPProtocol.bind(ConnectionPolicy(server)),
        # Only [auth] trusted_proxies decides whose X-Forwarded-For counts (http/access.py).
        # uvicorn's own handling, on by default and trusting 127.0.0.1, made the header of any
        # local client its address, past a token's IP restriction and into the usage log
        # (issue 12, finding 2); off, X-Forwarded-Proto and -Host change nothing either.
        proxy_headers=False,
        root_path=server.root_path,
        timeout_keep_alive=server.keep_alive_s,  # type: ignore[arg-type]
        # Used by uvicorn's h11 protocol only, should one replace ours.
        h11_max_incomplete_event_size=server.max_header_bytes,
        log_config=None,
        log_level=server.log_level,
        access_log=False,
        lifespan="on",
        server_header=False,
        date_header=False,
        # SIGTERM / SIGINT: stop accepting, give requests in flight this long, then the
        # lifespan shutdown unloads the models.
        timeout_graceful_shutdown=server.shutdown_grace_s,  # type: ignore[arg-type]
    )


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on `host`:`port`, made as uvicorn makes its own (SO_REUSEADDR,
    IPv6 when the host has a colon), so uvicorn can serve on it as it is.

    Raises OSError (address in use, not this machine's, unknown host name).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listening now, not only bound, holds the port: with SO_REUSEADDR a second process
        # may bind a port that nobody listens on yet, and would fail only later.
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def address(host: str, port: int) -> str:
    """``127.0.0.1:8000``, ``[::1]:8000``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reason(exc: OSError) -> str:
    """``address already in use``: the system's message, as the rest of a sentence."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
