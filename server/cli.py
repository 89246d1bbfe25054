"""The `cinfer` command line.

    cinfer [serve] [--config FILE] [--repository DIR] [--host H] [--port P]
    cinfer tokens create --name NAME [--scope infer,read,admin] [--models GLOB,...]
                         [--ips CIDR,...] [--rate-limit N] [--monthly-quota N]
                         [--expires 2027-01-31|30d] [--remark TEXT]
    cinfer tokens list | show REF | pause REF | resume REF | revoke REF | delete REF
    cinfer tokens extend REF --expires WHEN | reset-usage REF | update REF [--scope ...]


`serve` is the default command, so bare `cinfer` serves with ./config.toml and
`python -m server --repository DIR --port 9000` serves too. `tokens` manages the API tokens in
``[auth] database`` (the same config.toml and ``CINFER_*`` variables as the server, so
``CINFER_AUTH__DATABASE`` points both at one file); REF is a token's id or name. A running
server sees the change within a second.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from . import __version__, affinity
from .errors import CinferError
from .settings import Settings, load

COMMANDS = ("serve", "tokens")
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
    add_tokens_parser(commands)
    return parser


def add_tokens_parser(commands: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, help="settings file (default: ./config.toml when present)"
    )
    common.add_argument("--json", action="store_true", help="print JSON")
    tokens = commands.add_parser("tokens", help="manage API tokens ([auth] database)")
    actions = tokens.add_subparsers(dest="action", metavar="ACTION", required=True)

    def limits(parser: argparse.ArgumentParser, create: bool) -> None:
        if not create:
            parser.add_argument("--name", help="new name")
        parser.add_argument(
            "--scope",
            help="comma-separated: infer, read, admin" + (" (default: infer)" if create else ""),
        )
        parser.add_argument("--models", help="comma-separated model names or globs (empty: all)")
        parser.add_argument("--ips", help="comma-separated addresses or CIDR ranges (empty: any)")
        parser.add_argument("--rate-limit", type=int, help="requests per minute (0: no limit)")
        parser.add_argument("--monthly-quota", type=int, help="requests per UTC month (0: none)")
        parser.add_argument(
            "--expires", help="2027-01-31, 2027-01-31T12:00:00Z, 30d, 12h, 2w or never"
        )
        parser.add_argument("--remark", help="free text")

    create = actions.add_parser("create", parents=[common], help="create a token, print it once")
    create.add_argument("--name", required=True, help="unique name: letters, digits, _ . -")
    limits(create, create=True)
    actions.add_parser("list", parents=[common], help="list the tokens (never their secrets)")
    for action, text in [
        ("show", "show one token"),
        ("pause", "refuse a token until resumed"),
        ("resume", "accept a paused token again"),
        ("revoke", "refuse a token for good"),
        ("reset-usage", "set this month's count to 0"),
        ("delete", "remove a token"),
    ]:
        actions.add_parser(action, parents=[common], help=text).add_argument(
            "ref", help="id or name"
        )
    extend = actions.add_parser("extend", parents=[common], help="set a new expiry")
    extend.add_argument("ref", help="id or name")
    extend.add_argument("--expires", required=True, help="2027-01-31, 30d (from now) or never")
    update = actions.add_parser("update", parents=[common], help="change a token's fields")
    update.add_argument("ref", help="id or name")
    limits(update, create=False)


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
    if args.command != "serve":
        return load(path)
    overrides = {
        "server": {"host": args.host, "port": args.port, "log_level": args.log_level},
        "repository": {"path": args.repository},
    }
    return load(path, overrides=overrides)


def serve(settings: Settings) -> int:
    import uvicorn

    from .auth.guard import Guard
    from .auth.store import Database
    from .dataplane import DataPlane
    from .http.app import create_app
    from .reconciler import Reconciler

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
    if args.command == "tokens":
        configure_logging("warning")
        return manage_tokens(args, settings)
    configure_logging(settings.server.log_level)
    return serve(settings)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- tokens ---------------------------------------------------------------------------------


def manage_tokens(args: argparse.Namespace, settings: Settings) -> int:
    """Run one `cinfer tokens` action; 1 and a message on stderr when it cannot be done."""
    try:
        return asyncio.run(_tokens(args, settings))
    except CinferError as exc:
        print(f"cinfer tokens {args.action}: {exc}", file=sys.stderr)
        return 1


async def _tokens(args: argparse.Namespace, settings: Settings) -> int:
    from .auth.store import Database
    from .auth.tokens import TokenPatch, TokenSpec, validate

    async with Database(settings.auth.database) as database:
        action = args.action
        if action == "create":
            spec = validate(TokenSpec, _fields(args), "token")
            token, plaintext = await database.create(spec)
            if args.json:
                _print_json({"token": plaintext, **token.public()})
            else:
                print(plaintext)
                print(
                    f"created token {token.name!r} (id {token.id}, scopes "
                    f"{','.join(token.public()['scopes'])}) in {database.path}; this is the only "
                    "time it is shown: store it now",
                    file=sys.stderr,
                )
            return 0
        if action == "list":
            tokens = await database.tokens()
            if args.json:
                _print_json([t.public() for t in tokens])
            else:
                _print_table([t.public() for t in tokens])
            return 0
        if action == "show":
            token = await database.find(args.ref)
        elif action == "pause":
            token = await database.set_status(args.ref, "paused")
        elif action == "resume":
            token = await database.set_status(args.ref, "active")
        elif action == "revoke":
            token = await database.set_status(args.ref, "revoked")
        elif action == "reset-usage":
            token = await database.reset_usage(args.ref)
        elif action == "extend":
            token = await database.extend(args.ref, args.expires)
        elif action == "update":
            token = await database.update(args.ref, validate(TokenPatch, _fields(args), "change"))
        elif action == "delete":
            token = await database.delete(args.ref)
            print(f"deleted token {token.name!r} ({token.id})", file=sys.stderr)
            return 0
        else:  # pragma: no cover - argparse allows only the actions above
            raise AssertionError(action)
    if args.json:
        _print_json(token.public())
    else:
        for key, value in token.public().items():
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:>16}: {'' if shown is None else shown}")
    return 0


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    """The options given, as TokenSpec / TokenPatch fields (comma lists split)."""
    fields: dict[str, Any] = {}
    for option, key in [
        ("name", "name"),
        ("remark", "remark"),
        ("rate_limit", "rate_limit"),
        ("monthly_quota", "monthly_quota"),
        ("expires", "expires"),
    ]:
        value = getattr(args, option, None)
        if value is not None:
            fields[key] = value
    for option, key in [("scope", "scopes"), ("models", "models"), ("ips", "ips")]:
        value = getattr(args, option, None)
        if value is not None:
            fields[key] = [item.strip() for item in value.split(",") if item.strip()]
    return fields


def _print_json(data: Any) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _print_table(tokens: list[dict[str, Any]]) -> None:
    if not tokens:
        print("no tokens", file=sys.stderr)
        return
    columns = ["id", "name", "status", "scopes", "models", "rate_limit", "monthly_quota"]
    columns += ["used_this_month", "expires_at", "last_used_at"]
    rows = [columns] + [
        [
            ",".join(t[c]) or "*"
            if isinstance(t[c], list)
            else ("-" if t[c] is None else str(t[c]))
            for c in columns
        ]
        for t in tokens
    ]
    for t, row in zip(tokens, rows[1:]):
        if t["expired"] and t["status"] == "active":
            row[2] = "expired"
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
