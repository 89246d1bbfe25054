"""The jobs in SQLite: their rows, their inputs and results, and the files of large ones.

One file (``[jobs] database``, default ``data/jobs.db``; it may be the token database's own
file, the two schemas are versioned apart), in WAL mode like the token database
(auth/sqlite.py does the plumbing): a committed transaction survives ``kill -9`` of the
server, so a job is answered 202 only after the transaction that holds it has committed.
Inputs and results up to ``[jobs] inline_bytes`` are rows of `payloads`; larger ones are
files in the folder beside the database (``jobs-payloads/``, payloads.py), each durably
written before the row that names it is committed.

Every move of a job is one conditional UPDATE (``... WHERE state = 'running'``): of a cancel
and a finish that race, the one that commits first wins and the other changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..auth.sqlite import SQLiteFile, uncancellable
from .job import FINISHED, Job, Request, Result, State
from .payloads import Payloads

log = logging.getLogger("cinfer")

MIGRATIONS: list[list[str]] = [
    # 1 (issue 15): the jobs and their payloads.
    [
        """CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            owner TEXT,
            model TEXT NOT NULL,
            version TEXT,
            state TEXT NOT NULL
                CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
            attempts INTEGER NOT NULL DEFAULT 0,
            revision INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            error TEXT,
            model_version TEXT,
            callback_url TEXT,
            callback_status TEXT,
            callback_attempts INTEGER NOT NULL DEFAULT 0,
            callback_error TEXT,
            content_type TEXT NOT NULL,
            header_length INTEGER,
            query TEXT NOT NULL DEFAULT '',
            result_type TEXT,
            result_header_length INTEGER
        )""",
        "CREATE INDEX jobs_state ON jobs (state, seq)",
        "CREATE INDEX jobs_owner ON jobs (owner, seq)",
        "CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL",
        """CREATE TABLE payloads (
            job TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('input', 'result')),
            data BLOB,
            file TEXT,
            PRIMARY KEY (job, kind)
        )""",
    ],
]

COLUMNS = (
    "id, seq, owner, model, version, state, attempts, revision, created_at, started_at, "
    "finished_at, error, model_version, callback_url, callback_status, callback_attempts, "
    "callback_error"
)
SELECT = f"SELECT {COLUMNS} FROM jobs"
FIELDS = COLUMNS.split(", ")
_FINISHED = ", ".join(f"'{s.value}'" for s in FINISHED)


def row_job(row: Sequence[Any]) -> Job:
    """A row of `SELECT` as a Job."""
    values = dict(zip(FIELDS, row, strict=True))
    values["state"] = State(values["state"])
    return Job(**values)


class JobStore(SQLiteFile):
    """The jobs' rows and payloads in their SQLite file and the folder beside it."""

    what = "jobs database"
    migrations = MIGRATIONS
    versions = "jobs_schema_version"

    def __init__(self, path: Path, *, inline_bytes: int = 64 * 1024) -> None:
        super().__init__(path)
        self.payloads = Payloads(path.parent / f"{path.stem}-payloads", inline_bytes)
        self.folder = self.payloads.folder

    async def open(self) -> None:
        await super().open()
        named = {
            row[0] for row in await self.fetch("SELECT file FROM payloads WHERE file NOT NULL")
        }
        removed = await self.payloads.open(named)
        if removed:
            log.info(
                "%s %s: removed %d payload file(s) no job names", self.what, self.path, removed
            )

    # -- reads ----------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        rows = await self.fetch(f"{SELECT} WHERE id = ?", (job_id,))
        return row_job(rows[0]) if rows else None

    async def page(
        self,
        *,
        owner: str | None = None,
        anyone: bool = False,
        visible: Callable[[Job], bool] | None = None,
        model: str | None = None,
        state: State | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Up to `limit` jobs newest first, below seq `before`: those of `owner`, or with
        `anyone` those `visible` accepts (all without it)."""
        where, parameters = [], []
        if not anyone:
            where.append("owner IS ?")
            parameters.append(owner)
        if model is not None:
            where.append("model = ?")
            parameters.append(model)
        if state is not None:
            where.append("state = ?")
            parameters.append(state.value)
        where.append("seq < ?")
        sql = f"{SELECT} WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
        found: list[Job] = []
        cursor = before if before is not None else 2**63 - 1
        while len(found) < limit:
            rows = await self.fetch(sql, (*parameters, cursor, limit))
            jobs = [row_job(row) for row in rows]
            found += [job for job in jobs if visible is None or visible(job)]
            if len(rows) < limit:
                break
            cursor = jobs[-1].seq
        return found[:limit]

    async def unfinished(self) -> list[Job]:
        """Queued and running jobs, in submission order."""
        rows = await self.fetch(f"{SELECT} WHERE state IN ('queued', 'running') ORDER BY seq")
        return [row_job(row) for row in rows]

    async def undelivered(self) -> list[Job]:
        """Finished jobs whose callback has not been delivered nor given up."""
        rows = await self.fetch(f"{SELECT} WHERE callback_status = 'pending' ORDER BY seq")
        return [row_job(row) for row in rows]

    async def request(self, job_id: str) -> Request | None:
        rows = await self.fetch(
            "SELECT content_type, header_length, query, data, file FROM jobs "
            "JOIN payloads ON payloads.job = jobs.id AND kind = 'input' WHERE id = ?",
            (job_id,),
        )
        if not rows:
            return None
        content_type, header_length, query, data, file = rows[0]
        body = data if file is None else await self.payloads.read(file)
        return Request(body, content_type, header_length, query)

    async def result(self, job_id: str) -> Result | None:
        rows = await self.fetch(
            "SELECT result_type, result_header_length, data, file FROM jobs "
            "JOIN payloads ON payloads.job = jobs.id AND kind = 'result' WHERE id = ?",
            (job_id,),
        )
        if not rows:
            return None
        content_type, header_length, data, file = rows[0]
        body = data if file is None else await self.payloads.read(file)
        return Result(body, content_type, header_length)

    # -- moves ----------------------------------------------------------------------------

    @uncancellable
    async def add(self, job: Job, request: Request) -> Job:
        """Store a new queued job and its input; committed when this returns."""
        data, file = await self.payloads.keep(job.id, "input", request.body)
        try:
            async with self.transaction() as conn:
                cursor = await conn.execute(
                    "INSERT INTO jobs (id, owner, model, version, state, created_at, "
                    "callback_url, callback_status, content_type, header_length, query) "
                    "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?) RETURNING seq",
                    (job.id, job.owner, job.model, job.version, job.created_at,
                     job.callback_url, job.callback_status, request.content_type,
                     request.header_length, request.query),
                )  # fmt: skip
                (seq,) = await cursor.fetchone()  # type: ignore[misc]
                await conn.execute(
                    "INSERT INTO payloads (job, kind, data, file) VALUES (?, 'input', ?, ?)",
                    (job.id, data, file),
                )
        except BaseException:
            await self.payloads.remove([file])
            raise
        return dataclasses.replace(job, seq=seq)

    async def start(self, job_id: str, now: float) -> Job | None:
        """queued -> running, one more attempt; None if it is queued no more."""
        return await self._move(
            job_id, "state = 'running', attempts = attempts + 1, started_at = ?, error = NULL",
            (now,), "state = 'queued'",
        )  # fmt: skip

    async def requeue(self, job_id: str, error: str | None) -> Job | None:
        """running -> queued, the start not counted (the model refused it before it ran: it
        runs again later); None if it is running no more."""
        return await self._move(
            job_id, "state = 'queued', attempts = attempts - 1, error = ?", (error,),
            "state = 'running'",
        )  # fmt: skip

    async def fail(self, job_id: str, now: float, error: str, queued: bool = False) -> Job | None:
        """running (or, with `queued`, queued) -> failed with `error`."""
        was = "state IN ('queued', 'running')" if queued else "state = 'running'"
        return await self._move(
            job_id, "state = 'failed', finished_at = ?, error = ?, callback_status = "
            "CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END",
            (now, error), was,
        )  # fmt: skip

    async def cancel(self, job_id: str, now: float) -> Job | None:
        """queued or running -> canceled; None if it had finished."""
        return await self._move(
            job_id, "state = 'canceled', finished_at = ?, error = NULL, callback_status = "
            "CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END",
            (now,), "state IN ('queued', 'running')",
        )  # fmt: skip

    @uncancellable
    async def succeed(
        self, job_id: str, now: float, model_version: str, result: Result
    ) -> Job | None:
        """running -> succeeded with its result; None (and nothing kept) if it was canceled."""
        data, file = await self.payloads.keep(job_id, "result", result.body)
        try:
            async with self.transaction() as conn:
                cursor = await conn.execute(
                    "UPDATE jobs SET state = 'succeeded', finished_at = ?, error = NULL, "
                    "model_version = ?, result_type = ?, result_header_length = ?, "
                    "revision = revision + 1, callback_status = "
                    "CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END "
                    f"WHERE id = ? AND state = 'running' RETURNING {COLUMNS}",
                    (now, model_version, result.content_type, result.header_length, job_id),
                )
                row = await cursor.fetchone()
                if row is not None:
                    await conn.execute(
                        "INSERT OR REPLACE INTO payloads (job, kind, data, file) "
                        "VALUES (?, 'result', ?, ?)",
                        (job_id, data, file),
                    )
        except BaseException:
            await self.payloads.remove([file])
            raise
        if row is None:
            await self.payloads.remove([file])
            return None
        return row_job(row)

    async def called_back(
        self, job_id: str, status: str, attempts: int, error: str | None
    ) -> Job | None:
        """Record a callback delivery's outcome (a finished job's only change)."""
        return await self._move(
            job_id, "callback_status = ?, callback_attempts = ?, callback_error = ?",
            (status, attempts, error), "callback_url IS NOT NULL",
        )  # fmt: skip

    @uncancellable
    async def recover(self, max_attempts: int, now: float) -> list[Job]:
        """At start-up: jobs the last run left running are queued again, or failed once they
        have started `max_attempts` times; those moved."""
        async with self.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE jobs SET state = 'failed', finished_at = ?, revision = revision + 1, "
                "error = 'the server stopped ' || attempts || ' time(s) while the job was "
                "running ([jobs] max_attempts = ' || ? || ')', callback_status = "
                "CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END "
                f"WHERE state = 'running' AND attempts >= ? RETURNING {COLUMNS}",
                (now, max_attempts, max_attempts),
            )
            moved = [row_job(row) for row in await cursor.fetchall()]
            cursor = await conn.execute(
                "UPDATE jobs SET state = 'queued', revision = revision + 1 "
                f"WHERE state = 'running' RETURNING {COLUMNS}"
            )
            moved += [row_job(row) for row in await cursor.fetchall()]
        return moved

    @uncancellable
    async def delete(self, job_ids: Sequence[str]) -> int:
        """Forget finished jobs, their input and their result; how many there were."""
        if not job_ids:
            return 0
        marks = ", ".join("?" * len(job_ids))
        async with self.transaction() as conn:
            cursor = await conn.execute(
                "SELECT file FROM payloads JOIN jobs ON jobs.id = payloads.job WHERE file NOT "
                f"NULL AND job IN ({marks}) AND state IN ({_FINISHED})",
                job_ids,
            )
            files = [row[0] for row in await cursor.fetchall()]
            cursor = await conn.execute(
                f"DELETE FROM jobs WHERE id IN ({marks}) AND state IN ({_FINISHED})", job_ids
            )
            deleted = cursor.rowcount
            await conn.execute(
                f"DELETE FROM payloads WHERE job IN ({marks}) AND job NOT IN (SELECT id FROM jobs)",
                job_ids,
            )
        await self.payloads.remove(files)
        return deleted

    async def expired(self, before: float, limit: int = 500) -> list[str]:
        """Finished jobs that finished before `before` and whose callback is not pending."""
        rows = await self.fetch(
            "SELECT id FROM jobs WHERE finished_at < ? AND callback_status IS NOT 'pending' "
            "ORDER BY finished_at LIMIT ?",
            (before, limit),
        )
        return [row[0] for row in rows]

    # -- plumbing -------------------------------------------------------------------------

    async def _move(self, job_id: str, assignments: str, values: tuple[Any, ...],
                    condition: str) -> Job | None:  # fmt: skip
        @uncancellable
        async def move() -> Job | None:
            async with self.transaction() as conn:
                cursor = await conn.execute(
                    f"UPDATE jobs SET {assignments}, revision = revision + 1 "
                    f"WHERE id = ? AND {condition} RETURNING {COLUMNS}",
                    (*values, job_id),
                )
                row = await cursor.fetchone()
            return row_job(row) if row is not None else None

        return await move()
