"""Server settings: config.toml, then `CINFER_<SECTION>__<KEY>` variables, then CLI flags.

Each section is a pydantic model with ``extra="forbid"``, so an unknown key in the file stops
start-up with a message naming the key, the file and the line. An unknown ``CINFER_*``
variable only logs a warning: the environment is shared with other tools and with later
versions of this server.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import configfile
from .auth.tokens import canonical_network
from .errors import ConfigError

log = logging.getLogger("cinfer")

ENV_PREFIX = "CINFER_"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_request_bytes: int = Field(64 * 1024 * 1024, gt=0)
    """Largest request body accepted; larger bodies are refused with 413."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    pin_threads: bool = True
    """Keep the event loop and the engine-calling threads on one core, engines' own compute
    threads on all (docs/performance.md); false leaves placement to the kernel."""
    access_log: Literal["text", "json"] | bool = False
    """One line per request (request id, model, version, status, latency, batch size):
    false, "text" or "json" (true means "text")."""
    shutdown_grace_s: float = Field(10.0, ge=0)
    """On SIGTERM / SIGINT: how long requests in flight may take to finish before they are
    cancelled; then the models are unloaded."""


class MetricsSettings(Section):
    enabled: bool = True
    """Serve Prometheus metrics at /metrics."""
    port: int = Field(0, ge=0, le=65535)
    """0: on the API's port; otherwise a separate port (same host) for /metrics only."""


RepositoryMode = Literal["watch", "startup", "explicit"]


class RepositorySettings(Section):
    path: Path = Path("repository")
    """The model repository: one folder per model."""
    mode: RepositoryMode = "watch"
    """watch: load at start-up and follow the folder; startup: load once at start-up;
    explicit: load only what `POST /v2/repository/models/{m}/load` asks for. The repository
    API works in every mode."""
    settle_ms: int = Field(500, ge=0)
    """watch mode: a model folder is reloaded once no file in it has changed for this long,
    so a copy or `git pull` in progress is never loaded half-way."""


class AuthSettings(Section):
    """API tokens (docs/auth.md). The server enforces them when `enabled`; `cinfer tokens`
    manages the same `database` either way."""

    enabled: bool = False
    """Require an API token on every request but /v2/health/*. The shipped config.toml turns
    this on; a settings file without an [auth] table (older ones, tests, embedders) keeps the
    server open as before, and `serve` warns when that open server listens beyond loopback."""
    database: Path = Path("data/cinfer.db")
    """SQLite file of tokens and usage, created with its folder; relative to the config file."""
    public_metadata: bool = False
    """Serve server and model metadata, config, stats, readiness and /docs without a token."""
    trusted_proxies: list[str] = []
    """Addresses or CIDR ranges of reverse proxies whose X-Forwarded-For names the client."""
    log_retention_days: int = Field(30, ge=0)
    """Days of the per-request usage log to keep; 0 writes no usage log at all."""

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        return [canonical_network(value) for value in values]


class Settings(Section):
    server: ServerSettings = ServerSettings()
    repository: RepositorySettings = RepositorySettings()
    metrics: MetricsSettings = MetricsSettings()
    auth: AuthSettings = AuthSettings()


def load(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build the settings from the file at `path` (optional), the environment and `overrides`.

    `overrides` holds the CLI flags as ``{"server": {"port": 9000}}``; None values are skipped.
    A relative ``[repository] path`` or ``[auth] database`` in a file is taken relative to
    that file's folder.
    """
    data: dict[str, Any] = {}
    text = None
    source = "settings"
    if path is not None:
        data, text = configfile.read(path)
        source = str(path)
        for section, key in (("repository", "path"), ("auth", "database")):
            table = data.get(section)
            if isinstance(table, dict) and isinstance(table.get(key), str):
                table[key] = str(path.parent / table[key])
    settings = configfile.parse(Settings, data, source, text)
    merged = settings.model_dump()
    _apply_env(merged, os.environ if env is None else env)
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                merged.setdefault(section, {})[key] = value
    return configfile.parse(Settings, merged, "environment or command line")


def _apply_env(merged: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        section, sep, key = name[len(ENV_PREFIX) :].lower().partition("__")
        fields = Settings.model_fields
        if not sep or section not in fields:
            log.warning("ignoring unknown setting %s: no section [%s]", name, section)
            continue
        annotation = fields[section].annotation
        if not isinstance(annotation, type) or key not in annotation.model_fields:
            log.warning("ignoring unknown setting %s: no key %r in [%s]", name, key, section)
            continue
        merged[section][key] = _env_value(raw)


def _env_value(raw: str) -> Any:
    """Arrays and tables are read as TOML (``["10.0.0.0/8"]``); pydantic coerces the rest."""
    if raw.lstrip()[:1] in ("[", "{"):
        try:
            return configfile.loads(f"v = {raw}", "environment")["v"]
        except ConfigError:
            return raw
    return raw
