"""`cinfer tokens`: create, list and change the API tokens in ``[auth] database``.

The commands read the same config.toml and ``CINFER_*`` variables as the server, so
``CINFER_AUTH__DATABASE`` points both at one file; REF is a token's id or name. A running
server sees a change within a second. Exit codes: 0 done, 1 refused (the message on stderr
says why), 2 a usage or settings error.
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from ..auth.tokens import PERMISSIONS
from ..errors import CinferError
from .config import config_option, configure_logging, load_settings

if TYPE_CHECKING:
    from ..auth.store import Database
    from ..auth.tokens import Status, Token

F = TypeVar("F", bound=Callable[..., Any])

EXPIRES = "2027-01-31, 2027-01-31T12:00:00Z, 30d, 12h, 2w (from now) or never."
COLUMNS = (
    "id",
    "name",
    "status",
    "scopes",
    "models",
    "rate_limit",
    "monthly_quota",
    "used_this_month",
    "expires_at",
    "last_used_at",
)


def comma_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """``"read, infer"`` -> ``["read", "infer"]``; ``""`` -> ``[]`` (clears a list)."""
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


@click.group()
def tokens() -> None:
    """Manage the API tokens in [auth] database (docs/auth.md)."""


def token_command(name: str, help: str) -> Callable[[F], F]:
    """A `cinfer tokens NAME` command with the options every one takes."""

    if name not in ("create", "list"):
        help += " REF is the token's id or name."

    def decorate(command: F) -> F:
        command = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(command)
        tokens.command(name, help=help)(config_option(command))
        return command

    return decorate


def limit_options(*, create: bool) -> Callable[[F], F]:
    """What `create` sets and `update` changes; an option not given is left as it is."""
    scope = "Comma-separated permissions: " + ", ".join(PERMISSIONS)
    options = [
        # `--scope`, and "scopes" on the wire; the code calls them permissions.
        click.option(
            "--scope",
            "permissions",
            callback=comma_list,
            metavar="LIST",
            help=scope + (" (default: infer)." if create else "."),
        ),
        click.option(
            "--models",
            callback=comma_list,
            metavar="LIST",
            help="Comma-separated model names or globs (empty: all).",
        ),
        click.option(
            "--ips",
            callback=comma_list,
            metavar="LIST",
            help="Comma-separated addresses or CIDR ranges (empty: any).",
        ),
        click.option("--rate-limit", type=int, help="Requests per minute (0: no limit)."),
        click.option("--monthly-quota", type=int, help="Requests per UTC month (0: no quota)."),
        click.option("--expires", help=EXPIRES),
        click.option("--remark", help="Free text, up to 1000 characters."),
    ]

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def run(action: str, config: Path | None, work: Callable[[Database], Awaitable[Any]]) -> Any:
    """`work` on the token database the settings name; a CinferError ends the command with
    exit code 1 and ``cinfer tokens ACTION: <message>`` on stderr."""
    from ..auth.store import Database

    configure_logging("warning")
    settings = load_settings(config)

    async def session() -> Any:
        async with Database(settings.auth.database) as database:
            return await work(database)

    try:
        return asyncio.run(session())
    except CinferError as exc:
        click.echo(f"cinfer tokens {action}: {exc}", err=True)
        raise click.exceptions.Exit(1) from exc


def fields(**options: Any) -> dict[str, Any]:
    """The options given, as TokenSpec / TokenPatch fields (None: not given)."""
    if "permissions" in options:
        options["scopes"] = options.pop("permissions")  # the fields' alias
    return {key: value for key, value in options.items() if value is not None}


@token_command("create", "Create a token and print it, this once.")
@click.option("--name", required=True, help="Unique name: letters, digits, _ . -")
@limit_options(create=True)
def create(config: Path | None, as_json: bool, **options: Any) -> None:
    from ..auth.tokens import TokenSpec, validate

    async def work(database: Database) -> tuple[Token, str, Path]:
        token, plaintext = await database.create(validate(TokenSpec, fields(**options), "token"))
        return token, plaintext, database.path

    token, plaintext, path = run("create", config, work)
    if as_json:
        echo_json({"token": plaintext, **token.public()})
        return
    click.echo(plaintext)
    click.echo(
        f"created token {token.name!r} (id {token.id}, scopes "
        f"{','.join(token.public()['scopes'])}) in {path}; this is the only time it is shown: "
        "store it now",
        err=True,
    )


@token_command("list", "List the tokens (never their secrets).")
def list_(config: Path | None, as_json: bool) -> None:
    found: list[Token] = run("list", config, lambda database: database.tokens())
    if as_json:
        echo_json([token.public() for token in found])
    elif not found:
        click.echo("no tokens", err=True)
    else:
        for line in table(COLUMNS, [row(token.public()) for token in found]):
            click.echo(line)


def status_command(name: str, help: str, status: Status) -> None:
    """A command that sets a token's status (pause, resume, revoke)."""

    @token_command(name, help)
    @click.argument("ref")
    def command(config: Path | None, as_json: bool, ref: str) -> None:
        echo_token(run(name, config, lambda database: database.set_status(ref, status)), as_json)


status_command("pause", "Refuse a token until it is resumed.", "paused")
status_command("resume", "Accept a paused token again.", "active")
status_command("revoke", "Refuse a token for good (it can only be deleted then).", "revoked")


@token_command("show", "Show one token.")
@click.argument("ref")
def show(config: Path | None, as_json: bool, ref: str) -> None:
    echo_token(run("show", config, lambda database: database.find(ref)), as_json)


@token_command("reset-usage", "Set this month's request count back to 0.")
@click.argument("ref")
def reset_usage(config: Path | None, as_json: bool, ref: str) -> None:
    echo_token(run("reset-usage", config, lambda database: database.reset_usage(ref)), as_json)


@token_command("extend", "Set a new expiry.")
@click.argument("ref")
@click.option("--expires", required=True, help=EXPIRES)
def extend(config: Path | None, as_json: bool, ref: str, expires: str) -> None:
    echo_token(run("extend", config, lambda database: database.extend(ref, expires)), as_json)


@token_command("update", "Change a token's fields; those not given are kept.")
@click.argument("ref")
@click.option("--name", help="New name.")
@limit_options(create=False)
def update(config: Path | None, as_json: bool, ref: str, **options: Any) -> None:
    from ..auth.tokens import TokenPatch, validate

    async def work(database: Database) -> Token:
        return await database.update(ref, validate(TokenPatch, fields(**options), "change"))

    echo_token(run("update", config, work), as_json)


@token_command("delete", "Remove a token.")
@click.argument("ref")
def delete(config: Path | None, as_json: bool, ref: str) -> None:
    token: Token = run("delete", config, lambda database: database.delete(ref))
    click.echo(f"deleted token {token.name!r} ({token.id})", err=True)


# -- output ---------------------------------------------------------------------------------


def echo_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def echo_token(token: Token, as_json: bool) -> None:
    """One token: JSON, or a ``key: value`` line per field."""
    public = token.public()
    if as_json:
        echo_json(public)
        return
    for key, value in public.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        click.echo(f"{key:>16}: {'' if shown is None else shown}")


def row(public: dict[str, Any]) -> list[str]:
    """A token's cells in the list: lists comma-joined (empty: ``*``, any), None as ``-``."""
    cells = []
    for column in COLUMNS:
        value = public[column]
        if isinstance(value, list):
            cells.append(",".join(value) or "*")
        else:
            cells.append("-" if value is None else str(value))
    if public["expired"] and public["status"] == "active":
        cells[COLUMNS.index("status")] = "expired"
    return cells


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart, one line per row, header first."""
    lines = [header, *rows]
    widths = [max(width(line[i]) for line in lines) for i in range(len(header))]
    return [
        "  ".join(cell + " " * (w - width(cell)) for cell, w in zip(line, widths)).rstrip()
        for line in lines
    ]


def width(text: str) -> int:
    """Columns `text` takes in a terminal: CJK characters take two, combining marks none
    (names are ASCII now, but an older version took any letters, and len() would misalign
    them)."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )
