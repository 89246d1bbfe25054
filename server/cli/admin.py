"""`cinfer admin`: console accounts in ``[auth] database`` (docs/console.md).

    cinfer admin create --username NAME [--role admin|viewer] [--password-stdin]
    cinfer admin reset-password --username NAME [--password-stdin]
    cinfer admin list | delete --username NAME

A password is asked for twice without echo on a terminal, or read from the first line of
stdin with ``--password-stdin`` (for scripts: never put one on the command line). A reset or
a role change ends the account's sessions. Exit codes: 0 done, 1 refused (the message on
stderr says why), 2 a usage or settings error.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import CinferError
from .config import config_option, configure_logging, load_settings

if TYPE_CHECKING:
    from ..auth.accounts import Accounts


@click.group()
def admin() -> None:
    """Manage the console's accounts in [auth] database (docs/console.md)."""


def run(action: str, config: Path | None, work: Callable[[Accounts], Awaitable[Any]]) -> Any:
    from ..auth.accounts import Accounts
    from ..auth.store import Database

    configure_logging("warning")
    settings = load_settings(config)

    async def session() -> Any:
        async with Database(settings.auth.database) as database:
            return await work(Accounts(database))

    try:
        return asyncio.run(session())
    except CinferError as exc:
        click.echo(f"cinfer admin {action}: {exc}", err=True)
        raise click.exceptions.Exit(1) from exc


def password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if not sys.stdin.isatty():
        raise click.UsageError("no terminal to ask for the password on: use --password-stdin")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt="Confirm password"))


USERNAME = click.option("--username", required=True, help="The account's name.")
STDIN = click.option(
    "--password-stdin", "from_stdin", is_flag=True, help="Read the password from stdin."
)


@admin.command("create", help="Create a console account.")
@USERNAME
@click.option(
    "--role",
    type=click.Choice(["admin", "viewer"]),
    default="admin",
    show_default=True,
    help="admin changes things; viewer sees everything but secrets.",
)
@STDIN
@config_option
def create(config: Path | None, username: str, role: str, from_stdin: bool) -> None:
    secret = password(from_stdin)

    async def work(accounts: Accounts) -> None:
        await accounts.create(username, secret, role)
        await accounts.audit("cli", "account.create", username, f"role {role}")

    run("create", config, work)
    click.echo(f"created {role} account {username!r}")


@admin.command("reset-password", help="Set a new password; the account's sessions end.")
@USERNAME
@STDIN
@config_option
def reset_password(config: Path | None, username: str, from_stdin: bool) -> None:
    async def check(accounts: Accounts) -> None:
        await accounts.get(username)  # 1 before asking for a password nobody can use

    run("reset-password", config, check)
    secret = password(from_stdin)

    async def work(accounts: Accounts) -> None:
        await accounts.set_password(username, secret)
        await accounts.audit("cli", "account.password", username, "reset")

    run("reset-password", config, work)
    click.echo(f"password of {username!r} reset; its sessions ended")


@admin.command("list", help="List the console accounts.")
@config_option
def list_accounts(config: Path | None) -> None:
    async def work(accounts: Accounts) -> list[Any]:
        return await accounts.all()

    for account in run("list", config, work):
        click.echo(f"{account.username}\t{account.role}")


@admin.command("delete", help="Delete a console account (not the last admin).")
@USERNAME
@config_option
def delete(config: Path | None, username: str) -> None:
    async def work(accounts: Accounts) -> None:
        await accounts.delete(username)
        await accounts.audit("cli", "account.delete", username)

    run("delete", config, work)
    click.echo(f"deleted account {username!r}")
