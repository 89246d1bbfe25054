"""The API tokens in memory: checked per request, kept in step with the database.

A `Grant` is one token's live state (its rules, rate bucket and uncounted requests); the
`Guard` holds them all, answers `identify()` and `admit()` for each request without touching
SQLite, and every 0.5 s (`sync()`) writes the counts and usage log rows in one transaction,
reloads the tokens when another process (the CLI) changed the file (``PRAGMA data_version``),
and prunes the log. Reading credentials out of HTTP requests is http/access.py's job. See
issue 5 and docs/auth.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from hmac import compare_digest

from cachetools import LRUCache

from ..errors import CinferError, Forbidden, TooManyRequests, Unauthorized
from ..settings import AuthSettings
from .store import Database, LogRow, UsageCount
from .tokens import (
    Clock,
    Network,
    Token,
    contains,
    diagnose,
    hash_secret,
    iso,
    month_of,
    parse_network,
    split,
)

log = logging.getLogger("cinfer")

MAX_CACHED = 4096
"""Entries per in-memory cache (verified tokens, model and address decisions), least
recently used dropped first."""
MAX_LOG_ROWS = 500_000
"""Usage log rows held while the database cannot be written; later ones are dropped."""


class UnknownToken(Unauthorized):
    """A well-formed token that no loaded token matches (yet: see Guard.catch_up)."""


@dataclass(frozen=True, slots=True)
class Need:
    """What a request needs: a valid token with one of `permissions` (none: any valid token),
    and `model` allowed when set."""

    permissions: tuple[str, ...]
    target: str = ""
    """What the request does, for messages: ``GET /v2/models/iris/config``."""
    model: str | None = None
    version: str | None = None
    infer: bool = False
    """An inference: the door reports the status itself, the usage log counts it."""


class Grant:
    """One token's live state: its rules, its rate bucket and its uncounted requests."""

    __slots__ = (
        "active",
        "address_ok",
        "bucket",
        "capacity",
        "expires_at",
        "flushing",
        "id",
        "last_used",
        "model_ok",
        "month",
        "name",
        "networks",
        "patterns",
        "pending",
        "permissions",
        "quota",
        "rate",
        "stamp",
        "token",
        "used",
    )

    def __init__(self, token: Token, month: str) -> None:
        self.token = token
        self.id = token.id
        self.name = token.name
        self.active = token.status == "active"
        self.expires_at = token.expires_at
        self.permissions = token.permissions
        self.networks: tuple[Network, ...] = tuple(parse_network(ip) for ip in token.ips)
        self.patterns = token.models
        self.model_ok: LRUCache[str, bool] = LRUCache(MAX_CACHED)
        self.address_ok: LRUCache[str, bool] = LRUCache(MAX_CACHED)
        self.capacity = float(token.rate_limit)
        self.rate = token.rate_limit / 60.0
        self.bucket = self.capacity
        self.stamp = 0.0
        self.quota = token.monthly_quota
        self.month = month
        self.used = token.used_in(month)
        """This month's requests as the database last said, plus those written since."""
        self.flushing = 0
        """Requests being written right now."""
        self.pending = 0
        """Requests not yet written."""
        self.last_used: float | None = token.last_used_at

    def allows_model(self, model: str) -> bool:
        allowed = self.model_ok.get(model)
        if allowed is None:
            allowed = any(fnmatchcase(model, pattern) for pattern in self.patterns)
            self.model_ok[model] = allowed
        return allowed

    def allows_address(self, address: str) -> bool:
        allowed = self.address_ok.get(address)
        if allowed is None:
            allowed = contains(self.networks, address)
            self.address_ok[address] = allowed
        return allowed

    def take(self, now: float) -> float:
        """Take one request from the bucket: 0, or the seconds until one is available.

        A token bucket holding `rate_limit` requests, refilled evenly over a minute: a burst of
        up to the limit, then the limit per minute.
        """
        if now > self.stamp:
            self.bucket = min(self.capacity, self.bucket + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.bucket >= 1.0:
            self.bucket -= 1.0
            return 0.0
        return (1.0 - self.bucket) / self.rate


class Guard:
    """The tokens in memory, checked per request and kept in step with the database."""

    def __init__(
        self,
        database: Database,
        settings: AuthSettings,
        *,
        clock: Clock = time.time,
        interval: float = 0.5,
    ) -> None:
        self.database = database
        self.settings = settings
        self.clock = clock
        self.interval = interval
        self.public_metadata = settings.public_metadata
        self.logging = settings.log_retention_days > 0
        self._grants: dict[str, Grant] = {}
        self._verified: LRUCache[str, str] = LRUCache(MAX_CACHED)
        self._log: list[LogRow] = []
        self._dropped = 0
        self._carry: list[UsageCount] = []
        self._month, self._month_start, self._month_end = month_of(clock())
        self._version = 0
        self._pruned = 0.0
        self._lock = asyncio.Lock()
        self._caught_up = -math.inf
        self._catching_up: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database, load the tokens, start writing usage and watching for changes."""
        await self.database.open()
        async with self._lock:
            await self._load()
            self._version = await self.database.data_version()
            await self._prune()
        if not self._grants:
            log.warning(
                "authentication is on and %s holds no API token: every request but "
                "/v2/health/* will get 401. Create the first admin token with: "
                "cinfer tokens create --name admin --scope admin,read,infer",
                self.database.path,
            )
        else:
            log.info(
                "authentication is on: %d API token(s) in %s", len(self._grants), self.database.path
            )
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(self._stopping))

    async def stop(self) -> None:
        """Write what is still in memory and close the database."""
        if self._task is not None and self._stopping is not None:
            # Let a sync in progress finish rather than cancel it between its write and its
            # bookkeeping (the counts would then be written twice).
            self._stopping.set()
            await self._task
            self._task = None
        try:
            async with self._lock:
                await self._flush()
        finally:
            await self.database.close()

    async def _run(self, stopping: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval)
            if stopping.is_set():
                return
            try:
                await self.sync()
            except CinferError as exc:
                log.warning("%s (will retry)", exc)
            except Exception:
                log.exception("writing API token usage failed (will retry)")

    async def sync(self) -> None:
        """Write the counts and log rows, reload if another process changed the tokens."""
        async with self._lock:
            await self._flush()
            version = await self.database.data_version()
            if version != self._version:
                self._version = version
                await self._load()
            if self.clock() - self._pruned > 3600:
                await self._prune()
        if self._dropped:
            log.warning(
                "usage log: %d rows dropped while the database was unwritable", self._dropped
            )
            self._dropped = 0

    async def catch_up(self) -> None:
        """Look for tokens another process added since the last sync, now.

        Called when a request presents a token this process does not know, so that
        ``cinfer tokens create`` followed at once by a request works. Concurrent callers share
        one check, and checks are at least 50 ms apart: unknown tokens cannot turn into load
        on the database.
        """
        if self._catching_up is None:
            now = time.monotonic()
            if now - self._caught_up < 0.05:
                return
            self._caught_up = now
            self._catching_up = asyncio.ensure_future(self._check_version())
            self._catching_up.add_done_callback(self._caught)
        await asyncio.shield(self._catching_up)

    def _caught(self, _: asyncio.Future[None]) -> None:
        self._catching_up = None

    async def _check_version(self) -> None:
        async with self._lock:
            version = await self.database.data_version()
            if version != self._version:
                self._version = version
                await self._load()

    async def reload(self) -> None:
        """Load the tokens again now (after a change through the admin API)."""
        async with self._lock:
            await self._load()

    async def reset_usage(self, ref: str) -> Token:
        """Set a token's count for this month to 0, requests not yet written included."""
        async with self._lock:
            await self._flush()
            token = await self.database.reset_usage(ref)
            await self._load()
        return token

    async def flush(self) -> None:
        """Write the counts and log rows now."""
        async with self._lock:
            await self._flush()

    def current(self, token: Token) -> Token:
        """`token` with this month's count and last use as they stand in memory, including
        the requests not written yet."""
        month = month_of(self.clock())[0]
        grant = self._grants.get(token.id)
        if grant is None or grant.month != month:
            return token
        return dataclasses.replace(
            token,
            usage_month=month,
            used=grant.used + grant.flushing + grant.pending,
            last_used_at=grant.last_used,
        )

    async def _load(self) -> None:
        tokens = await self.database.tokens()
        old, month = self._grants, self._month
        grants = {}
        for token in tokens:
            grant = Grant(token, month)
            previous = old.get(token.id)
            if previous is not None:
                self._carry_over(previous, grant)
            grants[token.id] = grant
        self._grants = grants

    def _carry_over(self, previous: Grant, grant: Grant) -> None:
        """Keep the in-memory state of a token across a reload."""
        if previous.month == grant.month:
            grant.pending, grant.flushing = previous.pending, previous.flushing
        elif previous.pending:
            self._carry.append(
                (previous.id, previous.month, previous.pending, previous.last_used or 0.0)
            )
        if previous.capacity and grant.capacity:
            grant.bucket = min(previous.bucket, grant.capacity)
            grant.stamp = previous.stamp
        if previous.last_used is not None:
            grant.last_used = max(previous.last_used, grant.last_used or 0.0)

    async def _flush(self) -> None:
        carried, self._carry = self._carry, []
        batch = []
        counts = list(carried)
        for grant in self._grants.values():
            if grant.pending:
                n = grant.pending
                counts.append((grant.id, grant.month, n, grant.last_used or 0.0))
                batch.append((grant, grant.month, n))
                grant.pending = 0
                grant.flushing += n
        rows, self._log = self._log, []
        if not counts and not rows:
            return
        try:
            await self.database.save_usage(counts, rows)
        except BaseException:
            for grant, month, n in batch:
                if grant.month == month:
                    grant.flushing -= n
                    grant.pending += n
                else:
                    self._carry.append((grant.id, month, n, grant.last_used or 0.0))
            self._carry.extend(carried)
            self._log[:0] = rows[: max(0, MAX_LOG_ROWS - len(self._log))]
            raise
        for grant, month, n in batch:
            if grant.month == month:  # else the month turned while writing: starts at 0
                grant.flushing -= n
                grant.used += n

    async def _prune(self) -> None:
        self._pruned = self.clock()
        days = self.settings.log_retention_days
        deleted = await self.database.prune(self._pruned - days * 86400)
        if deleted:
            log.info("usage log: pruned %d rows older than %d days", deleted, days)

    # -- per request ----------------------------------------------------------------------

    def identify(self, credentials: str | None) -> Grant:
        """The token a request presents (the bearer token, without its scheme), or 401."""
        if credentials is None:
            raise Unauthorized(
                "this endpoint needs an API token: send 'Authorization: Bearer cinfer_...'",
                invalid_token=False,
            )
        token_id = self._verified.get(credentials)
        if token_id is not None:
            grant = self._grants.get(token_id)
            if grant is not None:
                return grant
            del self._verified[credentials]  # deleted since
        return self._verify(credentials)

    def _verify(self, credentials: str) -> Grant:
        parts = split(credentials) if len(credentials) < 256 else None
        if parts is None:
            raise Unauthorized(f"malformed API token: {diagnose(credentials)}")
        grant = self._grants.get(parts[0])
        if grant is None or not compare_digest(hash_secret(parts[1]), grant.token.secret_hash):
            raise UnknownToken("unknown API token")
        self._verified[credentials] = grant.id
        return grant

    def admit(self, grant: Grant, need: Need, address: str, now: float) -> None:
        """Let one request through `grant` at `now`, or raise the 401/403/429 that says why."""
        if not grant.active:
            verb = "was revoked" if grant.token.status == "revoked" else "is paused"
            raise Unauthorized(f"API token {grant.name!r} {verb}")
        if grant.expires_at is not None and now >= grant.expires_at:
            raise Unauthorized(f"API token {grant.name!r} expired at {iso(grant.expires_at)}")
        if grant.networks and not grant.allows_address(address):
            raise Forbidden(f"API token {grant.name!r} may not be used from address {address}")
        if need.permissions:
            for wanted in need.permissions:
                if wanted in grant.permissions:
                    break
            else:
                raise Forbidden(
                    f"API token {grant.name!r} lacks the {' or '.join(need.permissions)} scope "
                    f"needed for {need.target}"
                    + (f" (model {need.model!r})" if need.model is not None else "")
                )
        if need.model is not None and grant.patterns and not grant.allows_model(need.model):
            raise Forbidden(f"API token {grant.name!r} may not use model {need.model!r}")
        if not self._month_start <= now < self._month_end:
            self._month, self._month_start, self._month_end = month_of(now)
        if grant.month != self._month:
            self._new_month(grant)
        if grant.quota and grant.used + grant.flushing + grant.pending >= grant.quota:
            raise TooManyRequests(
                f"API token {grant.name!r} has used its monthly quota of {grant.quota} "
                f"requests; the quota resets at {iso(self._month_end)}",
                retry_after=math.ceil(self._month_end - now),
            )
        if grant.capacity:
            wait = grant.take(now)
            if wait:
                raise TooManyRequests(
                    f"API token {grant.name!r} is over its rate limit of "
                    f"{int(grant.capacity)} requests per minute; retry in {math.ceil(wait)} s",
                    retry_after=math.ceil(wait),
                )
        grant.pending += 1
        grant.last_used = now

    def _new_month(self, grant: Grant) -> None:
        if grant.pending:
            self._carry.append((grant.id, grant.month, grant.pending, grant.last_used or 0.0))
        grant.month = self._month
        grant.used = grant.token.used_in(self._month)
        grant.pending = grant.flushing = 0

    def record(self, row: LogRow) -> None:
        """One request for the usage log, written with the next batch."""
        if len(self._log) < MAX_LOG_ROWS:
            self._log.append(row)
        else:
            self._dropped += 1
