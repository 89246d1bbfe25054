"""The server's SQLite file: one connection in WAL mode, the schema migrated at open, one
write transaction at a time, and sqlite3 errors as `DatabaseError` naming the file.

`SQLiteFile` is the plumbing; the token records (auth/store.py) and the console's accounts
(auth/accounts.py) are built on it, over the same file and schema (auth/schema.py), and so
are the async jobs (jobs/store.py), in a file and schema of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, ParamSpec, Self, TypeVar

import aiosqlite

from ..errors import DatabaseError
from .schema import MIGRATIONS
from .tokens import Clock

log = logging.getLogger("cinfer")

# aiosqlite logs every statement with its parameters at DEBUG: token hashes and password
# hashes among them. Never below INFO, for the server and for whoever embeds this module.
_driver = logging.getLogger("aiosqlite")
if _driver.level < logging.INFO:
    _driver.setLevel(logging.INFO)

P = ParamSpec("P")
T = TypeVar("T")


def uncancellable(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Awaitable[T]]:
    """Run a write to its end (commit or rollback) even when its caller is cancelled: a
    cancellation between BEGIN and COMMIT would leave the shared connection in a transaction."""

    @functools.wraps(method)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.shield(method(*args, **kwargs))

    return run


class SQLiteFile:
    """The database at `path` (created with its folder); `clock` dates what it records."""

    what = "database"
    """What the file is, in messages."""
    migrations: list[list[str]] = MIGRATIONS
    """The schema, as the statements that take it from each version to the next."""
    versions = "schema_version"
    """The table that records which of `migrations` the file has had: one per schema, so
    that two schemas (the tokens', the jobs') may share a file."""

    def __init__(self, path: Path, *, clock: Clock = time.time, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.clock = clock
        self.busy_timeout = busy_timeout
        self._conn: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(f"{self.what} {self.path}: cannot create folder: {exc}") from exc
        with self._translate():
            self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await self._execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = await self._scalar("PRAGMA journal_mode = WAL")
            if str(mode).lower() != "wal":
                log.warning("%s %s: WAL mode unavailable (%s)", self.what, self.path, mode)
            # In WAL mode NORMAL loses no committed transaction to a process crash (kill -9),
            # only possibly the last ones to a power cut.
            await self._execute("PRAGMA synchronous = NORMAL")
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def open_and_close(self) -> None:
        """Create or migrate the file and close it again: a start-up check."""
        await self.open()
        await self.close()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with self._translate():
                await conn.close()

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise DatabaseError(f"{self.what} {self.path} is not open")
        return self._conn

    async def _migrate(self) -> None:
        await self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.versions} (version INTEGER NOT NULL)"
        )
        async with self._transaction() as conn:
            version = await self._scalar(f"SELECT coalesce(max(version), 0) FROM {self.versions}")
            migrations = self.migrations
            if version > len(migrations):
                raise DatabaseError(
                    f"{self.what} {self.path} has schema version {version}, newer than this "
                    f"cinfer knows ({len(migrations)}); upgrade cinfer or use another file"
                )
            for number in range(version, len(migrations)):
                for statement in migrations[number]:
                    await conn.execute(statement)
                await conn.execute(f"INSERT INTO {self.versions} VALUES (?)", (number + 1,))
                log.info("%s %s: migrated to schema %d", self.what, self.path, number + 1)

    async def fetch(self, sql: str, parameters: Any = ()) -> list[Any]:
        """The rows of one read."""
        with self._translate():
            return list(await self.conn.execute_fetchall(sql, parameters))

    def transaction(self) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]:
        """One write transaction (see `_transaction`); run it under `uncancellable`."""
        return self._transaction()

    async def _execute(self, sql: str) -> None:
        with self._translate():
            await self.conn.execute(sql)

    async def _scalar(self, sql: str) -> Any:
        with self._translate():
            rows = list(await self.conn.execute_fetchall(sql))
        return rows[0][0]

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction at a time from this process; IMMEDIATE takes the file's write
        lock up front, so a concurrent writer waits (busy timeout) instead of deadlocking."""
        async with self._write_lock:
            conn = self.conn
            with self._translate():
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    await conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        await conn.execute("ROLLBACK")
                    raise

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError as exc:
            self._integrity(exc)
            raise DatabaseError(f"{self.what} {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise DatabaseError(f"{self.what} {self.path}: {exc}") from exc

    def _integrity(self, exc: sqlite3.IntegrityError) -> None:
        """Raise the error a constraint stands for, if it stands for one."""
