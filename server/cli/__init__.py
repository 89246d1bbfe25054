"""The `cinfer` command line.

    cinfer [serve] [--config FILE] [--repository DIR] [--host H] [--port P] [--log-level L]
    cinfer tokens create --name NAME [--scope infer,read,admin] [--models GLOB,...]
                         [--ips CIDR,...] [--rate-limit N] [--monthly-quota N]
                         [--expires 2027-01-31|30d] [--remark TEXT]
    cinfer tokens list | show REF | pause REF | resume REF | revoke REF | delete REF
    cinfer tokens extend REF --expires WHEN | reset-usage REF | update REF [--scope ...]
    cinfer admin create --username NAME [--role admin|viewer] [--password-stdin]
    cinfer admin reset-password --username NAME [--password-stdin] | list | delete
    cinfer batch MODEL INPUT --output OUT [--table NAME] [--url URL [--token T]] [...]

`serve` is the default command: `cinfer` with no command takes serve's flags and serves, so
bare `cinfer` serves with ./config.toml and `python -m server --repository DIR --port 9000`
serves too. One module per command: serve.py, tokens.py, admin.py, batch.py; config.py has
what they share.
"""

from __future__ import annotations

from pathlib import Path

import click

from .. import __version__
from .admin import admin
from .batch import batch
from .serve import serve, serve_options
from .tokens import tokens

__all__ = ["main"]


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cinfer", message="%(prog)s %(version)s")
@serve_options
@click.pass_context
def main(
    ctx: click.Context,
    config: Path | None,
    repository: Path | None,
    host: str | None,
    port: int | None,
    log_level: str | None,
) -> None:
    """Serve a model repository over the KServe v2 REST API, or manage its API tokens.

    Without a command, cinfer serves: the options below are serve's.
    """
    flags = {
        "config": config,
        "repository": repository,
        "host": host,
        "port": port,
        "log_level": log_level,
    }
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve, **flags)
    elif any(value is not None for value in flags.values()):
        # A group option before a command would otherwise be dropped without a word.
        given = next(name for name, value in flags.items() if value is not None)
        raise click.UsageError(
            f"--{given.replace('_', '-')} before the command {ctx.invoked_subcommand!r}: the "
            "options before a command are serve's; give a command's own options after it"
        )


main.add_command(serve)
main.add_command(tokens)
main.add_command(admin)
main.add_command(batch)
