"""`cinfer serve`: load the model repository and answer KServe v2 requests until stopped.

Exit codes: 0 after a clean stop, 2 for settings that cannot be used (a missing repository,
an unreadable token database), 3 when the server cannot start (uvicorn's code for that).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .. import __version__, affinity
from ..errors import CinferError
from ..settings import Settings
from .config import LOG_LEVELS, config_option, configure_logging, load_settings

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
    """Serve the model repository over the KServe v2 REST API (the default command).

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
    from ..dataplane import DataPlane
    from ..http.app import create_app
    from ..reconciler import Reconciler

    root = settings.repository.path
    if not root.is_dir():
        log.error("model repository %s does not exist or is not a folder", root)
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
    repository = settings.repository
    # The event loop runs on this (main) thread: pin it before uvicorn starts the loop, so the
    # threads that hand it the GIL can share its core (affinity.py).
    core = affinity.python_core() if settings.server.pin_threads else None
    affinity.pin(core)
    if core is not None:
        log.info("event loop and engine threads on CPU %d (engines' own threads on all)", core)
    dataplane = DataPlane(Reconciler(root, core), repository.mode, repository.settle_ms)
    app = create_app(settings, dataplane, guard)
    log.info(
        "cinfer %s serving %s (%s mode) on http://%s:%d",
        __version__,
        root,
        repository.mode,
        settings.server.host,
        settings.server.port,
    )
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,
        log_level=settings.server.log_level,
        access_log=False,
        lifespan="on",
        server_header=False,
        date_header=False,
        # SIGTERM / SIGINT: stop accepting, give requests in flight this long, then the
        # lifespan shutdown unloads the models.
        timeout_graceful_shutdown=settings.server.shutdown_grace_s,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
