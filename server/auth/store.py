"""The SQLite file behind API tokens: token records, usage and its log, quota leases.

One file (``[auth] database``, default ``data/cinfer.db``) is shared by the server and the
`cinfer tokens` CLI, possibly at the same moment: WAL mode lets readers proceed beside one
writer, and the busy timeout makes a second writer wait rather than fail. The server learns of
another process's changes from ``PRAGMA data_version`` (auth/guard.py polls it).

The schema (auth/schema.py) is versioned and migrated in one transaction at open, so an old
file is brought forward and a file from a newer server is refused rather than misread.
sqlite3 errors become `DatabaseError` (or `Conflict` for a taken name) naming the file.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, ParamSpec, TypeVar

from ..errors import Conflict, NotFound
from .schema import COLUMNS, row_token, token_row
from .sqlite import SQLiteFile, uncancellable
from .tokens import ID, Status, Token, TokenPatch, TokenSpec, generate, parse_expiry

log = logging.getLogger("cinfer")

#: Log rows per INSERT statement (7 variables each, within SQLite's variable limit).
LOG_ROWS_PER_INSERT = 1000 if sqlite3.sqlite_version_info >= (3, 32, 0) else 140


@functools.lru_cache(maxsize=8)
def _insert_log(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows)
    return (
        "INSERT INTO usage_log (time, token_id, model, version, status, latency_ms, client) "
        f"VALUES {values}"
    )


P = ParamSpec("P")
T = TypeVar("T")

STOPPED = "*stopped*"
"""The `rate_buckets` row a clean stop writes beside the buckets (its stamp: when)."""
RUNNING = "*running*"
"""The `rate_buckets` row a start writes: found by the next start, the run did not stop."""

UsageCount = tuple[str, str, int, float]
"""(token id, month ``2026-11``, requests, last used at) accumulated since the last write."""
LogRow = tuple[float, str | None, str | None, str | None, int, float, str]
"""(time, token id, model, version, status, latency in ms, client address): one request."""
Refusals = dict[tuple[int, str, int], int]
"""Requests refused without a token: (minute since the epoch, client address, status) ->
how many."""
Bucket = tuple[float, float]
"""A rate bucket: (requests it holds, when it held them)."""


class NameTaken(Conflict):
    """The UNIQUE constraint on tokens.name, before the caller names the name."""


class Database(SQLiteFile):
    """The token records, their usage and its log in the server's SQLite file."""

    what = "token database"

    # -- tokens ---------------------------------------------------------------------------

    async def tokens(self) -> list[Token]:
        with self._translate():
            rows = await self.conn.execute_fetchall(
                f"SELECT {COLUMNS} FROM tokens ORDER BY created_at, rowid"
            )
        return [row_token(row) for row in rows]

    async def find(self, ref: str) -> Token:
        """The token whose id or name is `ref`."""
        with self._translate():
            rows = list(
                await self.conn.execute_fetchall(
                    f"SELECT {COLUMNS} FROM tokens WHERE id = ? OR name = ?", (ref, ref)
                )
            )
        if not rows:
            raise NotFound(f"no token with id or name {ref!r}")
        return row_token(rows[0])

    @uncancellable
    async def create(self, spec: TokenSpec) -> tuple[Token, str]:
        """Store a new token; returns it and the full token string, which is not kept."""
        now = self.clock()
        expires_at = parse_expiry(spec.expires, now) if spec.expires else None
        token_id, plaintext, digest = generate()
        token = Token(
            id=token_id,
            name=spec.name,
            secret_hash=digest,
            remark=spec.remark,
            created_at=now,
            expires_at=expires_at,
            status="active",
            permissions=frozenset(spec.permissions),
            models=tuple(spec.models),
            ips=tuple(spec.ips),
            rate_limit=spec.rate_limit,
            monthly_quota=spec.monthly_quota,
        )
        with _name_taken(token.name):
            async with self._transaction() as conn:
                await conn.execute(
                    f"INSERT INTO tokens ({COLUMNS}) VALUES ({', '.join('?' * 15)})",
                    token_row(token),
                )
        return token, plaintext

    @uncancellable
    async def update(self, ref: str, patch: TokenPatch) -> Token:
        """Apply the fields set in `patch`; a revoked token can only be deleted."""
        fields = patch.model_fields_set
        with _name_taken(patch.name or ""):
            async with self._transaction():
                return await self._update(ref, patch, fields)

    async def _update(self, ref: str, patch: TokenPatch, fields: set[str]) -> Token:
        token = await self.find(ref)
        if token.status == "revoked" and fields:
            if fields == {"status"} and patch.status == "revoked":
                return token
            raise Conflict(
                f"token {token.name!r} ({token.id}) is revoked; revocation is permanent, "
                "create a new token instead"
            )
        for key in ("name", "remark", "rate_limit", "monthly_quota", "status"):
            value = getattr(patch, key)
            if key in fields and value is not None:
                setattr(token, key, value)
        if "permissions" in fields and patch.permissions is not None:
            token.permissions = frozenset(patch.permissions)
        if "models" in fields and patch.models is not None:
            token.models = tuple(patch.models)
        if "ips" in fields and patch.ips is not None:
            token.ips = tuple(patch.ips)
        if "expires" in fields:
            token.expires_at = parse_expiry(patch.expires or "never", self.clock())
        await self.conn.execute(
            "UPDATE tokens SET name = ?, remark = ?, expires_at = ?, status = ?, scopes = ?, "
            "models = ?, ips = ?, rate_limit = ?, monthly_quota = ? WHERE id = ?",
            (
                token.name,
                token.remark,
                token.expires_at,
                token.status,
                *token_row(token)[7:10],
                token.rate_limit,
                token.monthly_quota,
                token.id,
            ),
        )
        return token

    async def set_status(self, ref: str, status: Status) -> Token:
        return await self.update(ref, TokenPatch(status=status))

    async def extend(self, ref: str, expires: str) -> Token:
        """Set a new expiry (``2027-01-31``, ``30d`` from now, ``never``)."""
        return await self.update(ref, TokenPatch(expires=expires))

    @uncancellable
    async def reset_usage(self, ref: str) -> Token:
        """Set this month's count to 0 (requests a running server has not written yet stay)."""
        async with self._transaction() as conn:
            token = await self.find(ref)
            await conn.execute("UPDATE tokens SET used = 0 WHERE id = ?", (token.id,))
        token.used = 0
        return token

    @uncancellable
    async def delete(self, ref: str) -> Token:
        """Remove the token; its usage log rows stay (with its id) until they age out."""
        async with self._transaction() as conn:
            token = await self.find(ref)
            await conn.execute("DELETE FROM tokens WHERE id = ?", (token.id,))
        return token

    # -- usage ----------------------------------------------------------------------------

    async def data_version(self) -> int:
        """Changes when another connection (the CLI, another server) commits to the file."""
        return int(await self._scalar("PRAGMA data_version"))

    @uncancellable
    async def save_usage(
        self,
        counts: Sequence[UsageCount],
        rows: Sequence[LogRow],
        refusals: Refusals | None = None,
    ) -> None:
        """Add request counts (as deltas, so writers never overwrite each other), log rows and
        the counts of requests refused without a token.

        A count for a month older than the token's stored month is dropped: that month's
        quota no longer matters.
        """
        async with self._transaction() as conn:
            if refusals:
                await conn.executemany(
                    "INSERT INTO refusals VALUES (?, ?, ?, ?) ON CONFLICT "
                    "DO UPDATE SET requests = requests + excluded.requests",
                    [(*key, n) for key, n in refusals.items()],
                )
            await conn.executemany(
                "UPDATE tokens SET "
                "used = CASE WHEN usage_month = ?2 THEN used + ?3 "
                "WHEN usage_month < ?2 THEN ?3 ELSE used END, "
                "usage_month = max(usage_month, ?2), "
                "last_used_at = max(coalesce(last_used_at, 0), ?4) "
                "WHERE id = ?1",
                counts,
            )
            # Many rows per statement, not executemany: sqlite3 releases and retakes the GIL
            # around every statement it steps, and each hand-off stalls the event loop.
            for start in range(0, len(rows), LOG_ROWS_PER_INSERT):
                chunk = rows[start : start + LOG_ROWS_PER_INSERT]
                await conn.execute(_insert_log(len(chunk)), [v for row in chunk for v in row])

    @uncancellable
    async def lease(self, token_id: str, month: str, want: int) -> tuple[int, int]:
        """Take up to `want` requests of a token's monthly quota for `month` ahead of serving
        them: (how many it got, the month's count now, leases included).

        The count is raised before a request is served, so a crash can only lose requests
        taken and not served (`release` gives them back on a clean stop), never serve
        requests the database does not know of.
        """
        async with self._transaction() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT used, usage_month, monthly_quota FROM tokens WHERE id = ?",
                    (token_id,),
                )
            )
            if not rows:
                return 0, 0
            used, stored_month, quota = rows[0]
            if stored_month > month:  # another process is already in the next month
                return 0, used
            if stored_month < month:
                used = 0
            got = max(0, min(want, quota - used)) if quota else want
            await conn.execute(
                "UPDATE tokens SET used = ?, usage_month = ? WHERE id = ?",
                (used + got, month, token_id),
            )
        return got, used + got

    @uncancellable
    async def release(self, leases: Sequence[tuple[str, str, int]]) -> None:
        """Give back the unserved part of quota leases: (token id, month, requests)."""
        async with self._transaction() as conn:
            await conn.executemany(
                "UPDATE tokens SET used = max(0, used - ?3) WHERE id = ?1 AND usage_month = ?2",
                leases,
            )

    @uncancellable
    async def take_buckets(self, started_at: float) -> tuple[bool | None, dict[str, Bucket]]:
        """The rate buckets the last run left: (True, buckets) after a clean stop, (False, {})
        when the last run did not stop cleanly, (None, {}) when none ever ran. A run marker
        replaces them, so a crash of this run reads as one at the next start."""
        async with self._transaction() as conn:
            rows = await conn.execute_fetchall("SELECT token_id, level, stamp FROM rate_buckets")
            await conn.execute("DELETE FROM rate_buckets")
            await conn.execute("INSERT INTO rate_buckets VALUES (?, 0, ?)", (RUNNING, started_at))
        buckets = {token_id: (level, stamp) for token_id, level, stamp in rows}
        if buckets.pop(STOPPED, None) is not None:
            return True, buckets
        return (False if RUNNING in buckets else None), {}

    @uncancellable
    async def save_buckets(self, buckets: dict[str, Bucket], stopped_at: float) -> None:
        """Keep the rate buckets for the next start (a clean stop)."""
        async with self._transaction() as conn:
            await conn.execute("DELETE FROM rate_buckets")
            await conn.executemany(
                "INSERT INTO rate_buckets VALUES (?, ?, ?)",
                [(token_id, level, stamp) for token_id, (level, stamp) in buckets.items()]
                + [(STOPPED, 0.0, stopped_at)],
            )

    @uncancellable
    async def prune(self, before: float, *, batch: int = 10_000) -> int:
        """Delete usage log rows older than `before`, a batch per transaction."""
        total = 0
        while True:
            async with self._transaction() as conn:
                cursor = await conn.execute(
                    "DELETE FROM usage_log WHERE id IN "
                    "(SELECT id FROM usage_log WHERE time < ? ORDER BY time LIMIT ?)",
                    (before, batch),
                )
                deleted = cursor.rowcount
            total += deleted
            if deleted < batch:
                break
        async with self._transaction() as conn:
            await conn.execute("DELETE FROM refusals WHERE minute < ?", (int(before // 60),))
        return total

    async def usage(
        self, since: float, until: float, *, token: str | None = None, model: str | None = None
    ) -> list[dict[str, Any]]:
        """Requests and errors (status >= 400) per token, model and UTC day; `token` is an id
        or name (the id of a deleted token still finds its rows)."""
        where = "l.time >= ? AND l.time < ?"
        params: list[Any] = [since, until]
        if token is not None:
            try:
                token = (await self.find(token)).id
            except NotFound:
                if not ID.fullmatch(token):
                    raise
            where += " AND l.token_id = ?"
            params.append(token)
        if model is not None:
            where += " AND l.model = ?"
            params.append(model)
        with self._translate():
            rows = await self.conn.execute_fetchall(
                "SELECT date(l.time, 'unixepoch') AS day, l.token_id, t.name, l.model, "
                "count(*), sum(l.status >= 400), avg(l.latency_ms) "
                f"FROM usage_log AS l LEFT JOIN tokens AS t ON t.id = l.token_id WHERE {where} "
                "GROUP BY day, l.token_id, l.model ORDER BY day, t.name, l.model",
                params,
            )
        return [
            {
                "day": day,
                "token_id": token_id,
                "token_name": name,
                "model": model_name,
                "requests": requests,
                "errors": errors,
                "mean_latency_ms": round(latency, 3),
            }
            for day, token_id, name, model_name, requests, errors, latency in rows
        ]

    async def log_rows(
        self,
        since: float,
        until: float,
        *,
        token: str | None = None,
        model: str | None = None,
        status: int | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[tuple[Any, ...]]:
        """The usage log itself, newest first: (id, time, token id, token name, model,
        version, status, latency in ms, client) rows; `before` a row id, for the next page;
        `status` a code (404) or a class (4: every 4xx)."""
        where = "l.time >= ? AND l.time < ?"
        params: list[Any] = [since, until]
        if token is not None:
            where += " AND (l.token_id = ? OR t.name = ?)"
            params += [token, token]
        if model is not None:
            where += " AND l.model = ?"
            params.append(model)
        if status is not None:
            if status < 10:
                where += " AND l.status >= ? AND l.status < ?"
                params += [status * 100, status * 100 + 100]
            else:
                where += " AND l.status = ?"
                params.append(status)
        if before is not None:
            where += " AND l.id < ?"
            params.append(before)
        with self._translate():
            rows = await self.conn.execute_fetchall(
                "SELECT l.id, l.time, l.token_id, t.name, l.model, l.version, l.status, "
                "l.latency_ms, l.client FROM usage_log AS l "
                f"LEFT JOIN tokens AS t ON t.id = l.token_id WHERE {where} "
                "ORDER BY l.id DESC LIMIT ?",
                [*params, limit],
            )
        return [tuple(row) for row in rows]

    async def refused(self, since: float, until: float) -> list[dict[str, Any]]:
        """Requests refused without a token, per UTC day, client address and status."""
        with self._translate():
            rows = await self.conn.execute_fetchall(
                "SELECT date(minute * 60, 'unixepoch') AS day, client, status, sum(requests) "
                "FROM refusals WHERE minute >= ? AND minute < ? "
                "GROUP BY day, client, status ORDER BY day, client, status",
                (int(since // 60), math.ceil(until / 60)),
            )
        return [
            {"day": day, "client": client, "status": status, "requests": requests}
            for day, client, status, requests in rows
        ]

    def _integrity(self, exc: sqlite3.IntegrityError) -> None:
        if "tokens.name" in str(exc):
            raise NameTaken("a token with that name already exists") from exc


@contextlib.contextmanager
def _name_taken(name: str) -> Iterator[None]:
    try:
        yield
    except NameTaken as exc:
        raise Conflict(f"a token named {name!r} already exists") from exc
