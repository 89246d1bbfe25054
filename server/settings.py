"""Server settings: config.toml, then `CINFER_<SECTION>__<KEY>` variables, then CLI flags.

Each section is a pydantic model with ``extra="forbid"``, so an unknown key in the file stops
start-up with a message naming the key, the file and the line. An unknown ``CINFER_*``
variable only logs a warning: the environment is shared with other tools and with later
versions of this server.

pydantic-settings does the layering in `load()`: one source per layer, highest first (flags,
environment, file), deep-merged over the defaults and validated once. What stays ours is what
it does not do: reading the file through `configfile` (errors that name the file and line),
paths relative to the file, TOML arrays in variables, the warning for unknown variables, and
an error that names the layer the bad value came from.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from . import configfile
from .auth.tokens import canonical_network
from .errors import ConfigError

log = logging.getLogger("cinfer")

ENV_PREFIX = "CINFER_"
ENV_NESTED = "__"
RELATIVE_TO_FILE = (("repository", "path"), ("auth", "database"), ("jobs", "database"))
"""Paths that a settings file gives relative to its own folder."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_request_bytes: int = Field(64 * 1024 * 1024, gt=0)
    """Largest request body accepted; larger bodies are refused with 413."""
    max_image_pixels: int = Field(40_000_000, gt=0)
    """Pixels one image sent to an image input may have (width x height); a larger one is a
    400 before it is decoded, so a small file cannot unpack into gigabytes (docs/images.md)."""
    max_header_bytes: int = Field(64 * 1024, gt=0)
    """Largest request head (request line and headers) accepted, counted as it arrives: past
    it the server answers 431 and closes the connection without reading the rest. Real
    clients send under 1 KiB."""
    max_headers: int = Field(100, gt=0)
    """Most header lines in one request; more are answered 431 and the connection closed."""
    header_timeout_s: float = Field(10.0, gt=0)
    """How long a client has to send a request's complete head, from the moment its
    connection opens (or, on a kept-alive connection, its next request's first bytes
    arrive): then 408 and close; a connection that sent nothing is closed unanswered."""
    keep_alive_s: float = Field(5.0, gt=0)
    """An idle kept-alive connection is closed after this long without a new request."""
    max_connections: int = Field(1000, gt=0)
    """Connections open at once (HTTP and WebSocket). One opened past it is answered 503 at
    its first request and closed; those already open are served as usual. A connection runs
    one request at a time, so this also bounds the requests in flight."""
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
    root_path: str = Field("", pattern=r"^(/[A-Za-z0-9._~-]+)*$")
    """The path prefix a reverse proxy serves the server under (``/cinfer``) and strips
    before passing a request on: the console's links and cookies carry it. Empty when the
    server is served at the root."""


class GrpcSettings(Section):
    """The KServe v2 gRPC door (server/grpc/, docs/grpc.md): same process, loop and models
    as the REST port."""

    enabled: bool = True
    port: int = Field(8001, ge=0, le=65535)
    """The gRPC port, on [server] host; 0 turns the door off, as enabled = false does."""


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
    max_upload_mb: int = Field(2048, gt=0)
    """The largest model archive the console and ``/admin/models`` take (docs/console.md)."""
    max_unpacked_mb: int = Field(8192, gt=0)
    """... the most its files may hold once unpacked (a zip bomb is refused before it is)."""
    max_upload_files: int = Field(10_000, gt=0)
    """... and the most files and folders it may hold."""


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


class ConsoleSettings(Section):
    """The web console under /console (docs/console.md). Its accounts live in `[auth]
    database`, beside the tokens."""

    enabled: bool = False
    """Serve the console. The shipped config.toml turns it on; a settings file without a
    [console] table (older ones, tests, embedders) keeps it off."""
    session_idle_minutes: float = Field(30.0, gt=0)
    """A console session ends this long after its last request."""
    session_hours: float = Field(12.0, gt=0)
    """... and this long after sign-in, whatever its use."""


CALLBACK_HOST = re.compile(r"(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
"""An entry of ``[jobs] callback_hosts``: a host, ``host:port``, ``*.domain`` or ``[IPv6]``."""


class JobsSettings(Section):
    """Async jobs (docs/jobs.md): infer requests submitted now, run in the background,
    collected later."""

    enabled: bool = False
    """Serve /v2/jobs and the jobs URL of every model. The shipped config.toml turns this on;
    a settings file without a [jobs] table keeps it off (nothing is written)."""
    database: Path = Path("data/jobs.db")
    """SQLite file of the jobs (WAL mode), created with its folder; inputs and results larger
    than `inline_bytes` are files in the folder beside it named ``<stem>-payloads``."""
    retention_hours: float = Field(168.0, gt=0)
    """How long a finished job (its input and result) is kept, from when it finished."""
    max_queued_per_token: int = Field(1000, gt=0)
    """Unfinished (queued or running) jobs one API token may have; past it a submission gets
    429. With authentication off, every job is anonymous and the limit is theirs together."""
    max_attempts: int = Field(3, gt=0)
    """Starts of one job: a job found running at start-up (the server stopped under it) runs
    again until it has started this many times, then fails."""
    inline_bytes: int = Field(64 * 1024, ge=0)
    """Inputs and results up to this size are kept in the database, larger ones as files."""
    yield_ms: float = Field(10.0, ge=0)
    """Jobs yield to synchronous requests: the next job starts only when the model's pool has
    no synchronous request waiting and none has finished for this long."""
    callback_hosts: list[str] = []
    """Hosts a job's ``Callback-URL`` may name (``hooks.example.com``, ``host:8443`` for one
    port, ``*.example.com``); empty: callbacks are refused."""
    callback_secret: SecretStr = SecretStr("")
    """The key of the HMAC-SHA256 signature each callback carries (``Cinfer-Signature``);
    needed when `callback_hosts` is set."""
    callback_attempts: int = Field(5, gt=0)
    """Deliveries of a callback tried before it is given up (a 2xx answer ends them)."""
    callback_backoff_s: float = Field(1.0, gt=0)
    """The wait before the second delivery; doubled before each next one."""
    callback_timeout_s: float = Field(10.0, gt=0)
    """How long one delivery may take."""

    @field_validator("callback_hosts")
    @classmethod
    def _hosts(cls, values: list[str]) -> list[str]:
        for value in values:
            if not CALLBACK_HOST.fullmatch(value):
                raise ValueError(f"{value!r} is not a host name, host:port or *.domain")
        return [value.lower() for value in values]

    @model_validator(mode="after")
    def _secret(self) -> JobsSettings:
        if self.callback_hosts and not self.callback_secret.get_secret_value():
            raise ValueError(
                "callback_hosts is set but callback_secret is empty: callbacks are signed "
                "with it (set it, e.g. through CINFER_JOBS__CALLBACK_SECRET)"
            )
        return self


class CacheSettings(Section):
    """The response cache of the models whose model.toml has ``[cache] enabled = true``
    (docs/cache.md): a local LRU of `size_bytes`, or Redis at `redis_url`, shared by
    replicas."""

    size_bytes: int = Field(256 * 1024 * 1024, ge=0)
    """The local cache's size (keys and answers); the least recently used entries go first.
    0: no local cache."""
    redis_url: str = Field("", pattern=r"^(|rediss?://.+|unix://.+)$")
    """``redis://host:6379/0``: keep answers in Redis instead (the local cache is then off)."""
    redis_timeout_ms: float = Field(50.0, gt=0)
    """A Redis lookup or store taking longer fails: the request is served by the engines."""
    redis_ttl_s: int = Field(3600, ge=0)
    """How long Redis keeps an answer; 0: until Redis evicts it (its maxmemory policy)."""


class Settings(Section):
    """Every setting. Building one reads nothing: `load()` layers the file, the environment
    and the flags over these defaults."""

    server: ServerSettings = ServerSettings()
    repository: RepositorySettings = RepositorySettings()
    grpc: GrpcSettings = GrpcSettings()
    metrics: MetricsSettings = MetricsSettings()
    auth: AuthSettings = AuthSettings()
    console: ConsoleSettings = ConsoleSettings()
    jobs: JobsSettings = JobsSettings()
    cache: CacheSettings = CacheSettings()


@dataclass(frozen=True)
class SettingsFile:
    """A settings file as read: its data (relative paths resolved) and its text, for lines."""

    path: Path
    data: dict[str, Any]
    text: str

    @classmethod
    def read(cls, path: Path) -> SettingsFile:
        data, text = configfile.read(path)
        for section, key in RELATIVE_TO_FILE:
            table = data.get(section)
            if isinstance(table, dict) and isinstance(table.get(key), str):
                table[key] = str(path.parent / table[key])
        return cls(path, data, text)


class Environment(EnvSettingsSource):
    """`CINFER_*` variables from a given mapping (`load(env=...)`), not only ``os.environ``.

    Values of list fields are read as TOML (``["10.0.0.0/8"]``, the file's syntax) where
    pydantic-settings reads JSON; a value that is not TOML is left as text for pydantic to
    refuse with the key's name.
    """

    def __init__(self, settings_cls: type[BaseSettings], variables: Mapping[str, str]) -> None:
        self._variables = variables  # read by _load_env_vars, which super().__init__ calls
        super().__init__(
            settings_cls,
            case_sensitive=False,
            env_prefix=ENV_PREFIX,
            env_nested_delimiter=ENV_NESTED,
        )

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # The hook DotEnvSettingsSource overrides too; case-insensitive sources want the
        # names lower-cased.
        return {name.lower(): value for name, value in self._variables.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return configfile.loads(f"v = {value}", "environment")["v"]
        except ConfigError:
            return value


def load(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build the settings from the file at `path` (optional), the environment and `overrides`.

    `overrides` holds the CLI flags as ``{"server": {"port": 9000}}``; None values are skipped.
    A relative ``[repository] path`` or ``[auth] database`` in a file is taken relative to
    that file's folder. Precedence: flags, then environment, then file, then defaults.
    """
    file = SettingsFile.read(path) if path is not None else None
    variables = known_variables(os.environ if env is None else env)
    flags: dict[str, Any] = {
        section: given
        for section, values in (overrides or {}).items()
        if (given := {key: value for key, value in values.items() if value is not None})
    }

    # A class per call because pydantic-settings takes its sources from a classmethod;
    # `Settings` itself stays a plain model, so `Settings(...)` never reads the environment.
    class Layers(BaseSettings, Settings):
        # The file's keys and the flags match exactly, as TOML keys do; Environment
        # matches variable names in any case on its own.
        model_config = SettingsConfigDict(case_sensitive=True)

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            environment = Environment(settings_cls, dict(variables.values()))
            if file is None:
                return (init_settings, environment)
            return (init_settings, environment, InitSettingsSource(settings_cls, file.data))

    def origin(loc: tuple[Any, ...]) -> str:
        """Which layer gave the value at `loc`, as the error should name it."""
        names = [part for part in loc if isinstance(part, str)]
        if len(names) >= 2:
            section, key = names[0], names[1]
            if key in flags.get(section, {}):
                return "command line"
            if (section, key) in variables:
                return variables[section, key][0]
        if file is not None:
            return configfile.where(str(file.path), file.text, loc)
        return "settings"

    try:
        layers = Layers(**flags)
    except ValidationError as exc:
        raise ConfigError(configfile.explain(exc, origin)) from exc
    return Settings.model_validate(dict(layers))


def known_variables(env: Mapping[str, str]) -> dict[tuple[str, str], tuple[str, str]]:
    """The `CINFER_<SECTION>__<KEY>` variables of `env` that name a setting, as
    ``{("server", "port"): ("CINFER_SERVER__PORT", "9000")}``; a warning for each other
    `CINFER_*` one, which pydantic-settings would refuse under ``extra="forbid"``."""
    known: dict[tuple[str, str], tuple[str, str]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        section, sep, key = name[len(ENV_PREFIX) :].lower().partition(ENV_NESTED)
        fields = Settings.model_fields
        if not sep or section not in fields:
            log.warning("ignoring unknown setting %s: no section [%s]", name, section)
            continue
        annotation = fields[section].annotation
        if not isinstance(annotation, type) or key not in annotation.model_fields:
            log.warning("ignoring unknown setting %s: no key %r in [%s]", name, key, section)
            continue
        known[section, key] = (name, value)
    return known
