"""The API tokens in memory: checked per request, kept in step with the database.

A `Grant` (auth/grant.py) is one token's live state (its rules, rate bucket, quota lease and
uncounted requests); the `Guard` holds them all, answers `identify()` and `admit()` for each
request without touching SQLite, and every 0.5 s (`sync()`) writes the counts and usage log
rows in one transaction, reloads the tokens when another process (the CLI) changed the file
(``PRAGMA data_version``), and prunes the log. Reading credentials out of HTTP requests is
http/access.py's job. See issue 5 and docs/auth.md.

What a crash may cost (issue 12): a token with a monthly quota is served from a lease, a
block of its quota counted in the database before it is served (`Guard.lease`), so a
``kill -9`` loses at most the unserved rest of one lease and never serves a request the
database did not count; a clean stop gives the rest back. Rate buckets are saved by a clean
stop and restored at the next start; after a crash they start empty. The usage log loses the
rows of the last flush interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from hmac import compare_digest

from cachetools import LRUCache

from ..errors import CinferError, Forbidden, TooManyRequests, Unauthorized
from ..settings import AuthSettings
from .grant import MAX_CACHED, Grant, LeaseNeeded, Need, Steps, UnknownToken, check_steps, no_steps
from .store import Bucket, Database, LogRow, Refusals, UsageCount
from .tokens import (
    Clock,
    Token,
    diagnose,
    hash_secret,
    iso,
    month_of,
    split,
)

log = logging.getLogger("cinfer")

MAX_LOG_ROWS = 500_000
"""Usage log rows held while the database cannot be written; later ones are dropped."""
MAX_REFUSAL_KEYS = 10_000
"""Distinct (minute, address, status) counts of tokenless refusals held between two writes;
refusals from further addresses are counted under the address ``*``."""
LEASE_SHARE = 100
"""A quota lease is at most 1/LEASE_SHARE of the monthly quota (and at least 1 request): a
crash can cost a token at most that much of its month."""


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
        self._refusals: Refusals = {}
        self._leasing: dict[str, asyncio.Future[None]] = {}
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
        self.steps: Steps = no_steps  # create_app: a pipeline needs each step's model too

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database, load the tokens, start writing usage and watching for changes."""
        await self.database.open()
        async with self._lock:
            await self._load()
            self._restore_buckets(*await self.database.take_buckets(self.clock()))
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
            if self._leasing:  # a lease taken ahead is given back with the rest
                await asyncio.gather(*self._leasing.values(), return_exceptions=True)
            async with self._lock:
                await self._flush()
                await self._give_back()
        finally:
            await self.database.close()

    def _restore_buckets(self, clean: bool | None, buckets: dict[str, Bucket]) -> None:
        """Rate buckets as the last clean stop left them; all empty when the last run did not
        stop cleanly (a crash must not hand out a fresh minute); full on a first start."""
        if clean is None:
            return
        now = self.clock()
        for grant in self._grants.values():
            if not grant.capacity:
                continue
            if not clean:
                grant.bucket, grant.stamp = 0.0, now
            elif grant.id in buckets:
                level, stamp = buckets[grant.id]
                grant.bucket, grant.stamp = min(grant.capacity, level), stamp

    async def _give_back(self) -> None:
        """On a clean stop: return the unserved quota leases, keep the rate buckets."""
        leases = [(g.id, g.month, g.lease) for g in self._grants.values() if g.lease > 0]
        if leases:
            await self.database.release(leases)
            for grant in self._grants.values():
                grant.lease = 0
        now = self.clock()
        buckets = {}
        for grant in self._grants.values():
            if grant.capacity:
                buckets[grant.id] = (grant.level(now), now)
        await self.database.save_buckets(buckets, now)

    async def _run(self, stopping: asyncio.Event) -> None:
        # A write every `interval` from the last one's start, not its end: the rows a crash
        # can lose are those of one interval, however long a write takes.
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due = max(due + self.interval, loop.time())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), due - loop.time())
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
            grant = self._grants.get(token.id)
            if grant is not None:
                grant.lease = 0  # the reset forgot it: serving it would go uncounted
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
            used=max(0, grant.count()),
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
            grant.lease = previous.lease
        elif previous.pending:
            self._carry.append(
                (previous.id, previous.month, previous.pending, previous.last_used or 0.0)
            )
        grant.lease_size, grant.leased_at = previous.lease_size, previous.leased_at
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
            if grant.pending or grant.last_used != grant.written_use:
                n = grant.pending
                counts.append((grant.id, grant.month, n, grant.last_used or 0.0))
                batch.append((grant, grant.month, n))
                grant.pending = 0
                grant.flushing += n
                grant.written_use = grant.last_used
        rows, self._log = self._log, []
        refusals, self._refusals = self._refusals, {}
        if not counts and not rows and not refusals:
            return
        try:
            await self.database.save_usage(counts, rows, refusals)
        except BaseException:
            for key, n in refusals.items():
                self._refusals[key] = self._refusals.get(key, 0) + n
            for grant, month, n in batch:
                grant.written_use = None  # write its last use again next time
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
        if need.model is not None and grant.patterns:
            check_steps(grant, need.model, self.steps)
        if need.every_model and grant.patterns:
            raise Forbidden(
                f"API token {grant.name!r} is limited to models {','.join(grant.patterns)}; "
                f"{need.target} covers every model and needs a token without model limits"
            )
        if not self._month_start <= now < self._month_end:
            self._month, self._month_start, self._month_end = month_of(now)
        if grant.month != self._month:
            self._new_month(grant)
        if grant.quota and grant.lease <= 0:
            if grant.count() >= grant.quota:
                raise TooManyRequests(
                    f"API token {grant.name!r} has used its monthly quota of {grant.quota} "
                    f"requests; the quota resets at {iso(self._month_end)}",
                    retry_after=math.ceil(self._month_end - now),
                )
            raise LeaseNeeded
        if grant.capacity:
            wait = grant.take(now)
            if wait:
                raise TooManyRequests(
                    f"API token {grant.name!r} is over its rate limit of "
                    f"{int(grant.capacity)} requests per minute; retry in {math.ceil(wait)} s",
                    retry_after=math.ceil(wait),
                )
        if grant.quota:
            grant.lease -= 1
            if grant.lease <= grant.lease_size >> 2 and grant.id not in self._leasing:
                # The next block now, in the background: requests never wait for a lease
                # while the token keeps a steady pace.
                self._start_lease(grant)
        else:
            grant.pending += 1
        grant.last_used = now

    def recheck(self, token_id: str, model: str) -> str:
        """Whether work a token was admitted for earlier (a job, issue 15) may run now: the
        token still exists, is active and unexpired, has `infer` and may use `model`; its name.

        The address, rate and quota were checked, and the quota counted, when the work was
        admitted: they are not checked or counted again however often it runs.
        """
        grant = self._grants.get(token_id)
        if grant is None:
            raise Unauthorized(f"API token {token_id} no longer exists")
        if not grant.active:
            verb = "was revoked" if grant.token.status == "revoked" else "is paused"
            raise Unauthorized(f"API token {grant.name!r} {verb}")
        if grant.expires_at is not None and self.clock() >= grant.expires_at:
            raise Unauthorized(f"API token {grant.name!r} expired at {iso(grant.expires_at)}")
        if "infer" not in grant.permissions:
            raise Forbidden(f"API token {grant.name!r} lacks the infer scope")
        if grant.patterns and not grant.allows_model(model):
            raise Forbidden(f"API token {grant.name!r} may not use model {model!r}")
        return grant.name

    async def lease(self, grant: Grant) -> None:
        """Take the next block of `grant`'s quota from the database; concurrent requests for
        the same token share one. Admit again afterwards: 429 if none was left."""
        leasing = self._leasing.get(grant.id)
        if leasing is None:
            leasing = self._start_lease(grant)
        await asyncio.shield(leasing)

    def _start_lease(self, grant: Grant) -> asyncio.Future[None]:
        leasing = asyncio.ensure_future(self._lease(grant))
        self._leasing[grant.id] = leasing
        leasing.add_done_callback(lambda done: self._leased(grant.id, done))
        return leasing

    def _leased(self, token_id: str, done: asyncio.Future[None]) -> None:
        self._leasing.pop(token_id, None)
        if not done.cancelled() and done.exception() is not None:
            # Whoever awaited it got the error; one taken ahead is retried when it is needed.
            log.warning("quota lease for token %s failed: %s", token_id, done.exception())

    async def _lease(self, grant: Grant) -> None:
        now = time.monotonic()
        size, cap = grant.lease_size, max(1, grant.quota // LEASE_SHARE)
        if grant.leased_at is not None:
            # About a second of this token's traffic per lease: doubled when the last one
            # lasted less, halved when it lasted over five.
            spent = now - grant.leased_at
            size = min(cap, size * 2) if spent < 1.0 else max(1, size // 2) if spent > 5 else size
        want = min(size, cap, grant.quota - grant.count())
        if want <= 0:
            return
        month = grant.month
        got, used = await self.database.lease(grant.id, month, want)
        # The tokens may have been reloaded meanwhile: the lease belongs to the current grant.
        current = self._grants.get(grant.id, grant)
        if current.month != month:
            return  # the month turned: its quota no longer matters
        current.lease += got
        current.used += got
        if got < want:  # others took the rest: learn the count now, not at the next reload
            current.used = max(current.used, used - current.pending)
        current.lease_size, current.leased_at = size, time.monotonic()

    def refuse(self, now: float, address: str, status: int) -> None:
        """Count a request refused before any token was recognised (none, malformed, unknown):
        per minute, address and status, not a log row each, so a flood cannot fill the disk."""
        key = (int(now // 60), address, status)
        count = self._refusals.get(key)
        if count is None and len(self._refusals) >= MAX_REFUSAL_KEYS:
            key = (key[0], "*", status)
            count = self._refusals.get(key)
        self._refusals[key] = (count or 0) + 1

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
