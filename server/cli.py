"""The `cinfer` command line.

    cinfer [serve] [--config FILE] [--repository DIR] [--host H] [--port P]


`serve` is the default command, so bare `cinfer` serves with ./config.toml and
`python -m server --repository DIR --port 9000` serves too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import CinferError
from .settings import Settings, load

COMMANDS = ("serve",)
DEFAULT_CONFIG = Path("config.toml")

log = logging.getLogger("cinfer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cinfer", description="Serve a model repository over the KServe v2 REST API."
    )
    parser.add_argument("--version", action="version", version=f"cinfer {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the model repository (the default)")
    serve.add_argument(
        "--config", type=Path, help="settings file (default: ./config.toml when present)"
    )
    serve.add_argument("--repository", type=Path, help="model repository folder")
    serve.add_argument("--host", help="address to listen on")
    serve.add_argument("--port", type=int, help="port to listen on")
    serve.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], help="log level"
    )
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # watchfiles logs "N changes detected" at INFO for every batch of file events; the
    # reconciler logs what they changed.
    logging.getLogger("watchfiles").setLevel(
        max(logging.WARNING, logging.getLevelName(level.upper()))
    )


def settings_from(args: argparse.Namespace) -> Settings:
    path = args.config
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    overrides = {
        "server": {"host": args.host, "port": args.port, "log_level": args.log_level},
        "repository": {"path": args.repository},
    }
    return load(path, overrides=overrides)


def serve(settings: Settings) -> int:
    import uvicorn

    from .app import create_app
    from .dataplane import DataPlane
    from .reconciler import Reconciler

    root = settings.repository.path
    if not root.is_dir():
        log.error("model repository %s does not exist or is not a folder", root)
        return 2
    repository = settings.repository
    dataplane = DataPlane(Reconciler(root), repository.mode, repository.settle_ms)
    app = create_app(settings, dataplane)
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


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (
        args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help", "--version")
    ):
        args_list.insert(0, "serve")
    args = build_parser().parse_args(args_list)
    configure_logging(getattr(args, "log_level", None) or "info")
    try:
        settings = settings_from(args)
    except CinferError as exc:
        log.error("%s", exc)
        return 2
    configure_logging(settings.server.log_level)
    return serve(settings)
