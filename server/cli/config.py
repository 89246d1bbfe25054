"""What every command shares: the ``--config`` option, finding and loading the settings,
and the log format."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import CinferError
from ..settings import Settings, load

DEFAULT_CONFIG = Path("config.toml")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
PARAMETER_LOGGERS = ("aiosqlite",)
"""Database drivers that log statements with their parameters at DEBUG: kept at INFO."""

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("cinfer")


def config_option(command: F) -> F:
    """``--config FILE``, for `serve` and every `tokens` command."""
    return click.option(
        "--config",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Settings file (default: ./config.toml when there is one).",
    )(command)


def load_settings(
    config: Path | None, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> Settings:
    """The settings from `config` (or ./config.toml), the environment and `overrides`.

    A file, variable or flag that cannot be used ends the command with exit code 2 and the
    message, as a usage error would, and no traceback.
    """
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    try:
        return load(config, overrides=overrides)
    except CinferError as exc:
        log.error("%s", exc)
        raise click.exceptions.Exit(2) from exc


def configure_logging(level: str) -> None:
    """Log lines with time, level and logger on stderr, at `level` and above."""
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
    # Nothing derived from a secret is ever logged: at DEBUG these echo every statement with
    # its parameters (a new token's secret hash in its INSERT) or results (issue 12, finding 10).
    for name in PARAMETER_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(level.upper())))
