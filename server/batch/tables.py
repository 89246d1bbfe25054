"""Output rows as a SQLite or PostgreSQL table, one row per input row:

    "index"    the row's position in the input: the primary key
    "file"     the file's name, for a folder of images (else NULL)
    "outputs"  the outputs as a v2 infer response lists them (JSON; PostgreSQL: json)
    "error"    why the model refused the row (NULL when it answered)

Each `write` is one transaction, so the table holds whole checkpoints: rows 0 to N-1, and a
rerun starts at N (the primary key would refuse a row written twice). The run's lock: an
flock on a file beside the SQLite database named after the table (``scores.db.daily.lock``),
and a session advisory lock in PostgreSQL keyed on the table's name; either is released when
the run ends or dies.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from .outputs import TABLE_NAME, RowSink, lock
from .rows import BatchError, OutputLocked, Record, Schema

COLUMNS = ("index", "file", "outputs", "error")


def table_name(table: str | None, model: str) -> str:
    """``--table``, or the model's name (its dots and dashes as underscores)."""
    name = table if table is not None else re.sub(r"\W", "_", model)
    if not TABLE_NAME.match(name):
        raise BatchError(
            f"table name {name!r}: letters, digits and underscores, not starting with a digit "
            "(PostgreSQL: optionally schema.table)"
        )
    return name


def split_table(url: str, table: str | None, model: str) -> tuple[str, str]:
    """A database URL without its ``?table=`` (which libpq would refuse), and the table."""
    base, _, given = url.partition("?")
    query = parse_qsl(given, keep_blank_values=True)
    named = [value for key, value in query if key == "table"]
    if named and table is not None and named[-1] != table:
        raise BatchError(f"--table {table} and ?table={named[-1]} in --output disagree")
    rest = urlencode([(key, value) for key, value in query if key != "table"])
    name = table_name(table or next(reversed(named), None), model)
    return (f"{base}?{rest}" if rest else base), name


def sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` -> rel.db, ``sqlite:////abs.db`` -> /abs.db (SQLAlchemy's form)."""
    path = url.removeprefix("sqlite:").removeprefix("//")
    if not path.startswith("/") or len(path) < 2:
        raise BatchError(f"--output {url}: a SQLite URL is sqlite:///FILE?table=NAME")
    return path[1:]


def _mismatch(name: str, found: Sequence[str]) -> BatchError:
    return BatchError(
        f"table {name} has the columns {', '.join(found)}; cinfer batch writes "
        f"{', '.join(COLUMNS)}: give another table"
    )


def _outputs(record: Record) -> str | None:
    return record.outputs_json().decode() if record.outputs is not None else None


class SQLiteTable(RowSink):
    def __init__(self, path: Path, table: str) -> None:
        if "." in table:
            raise BatchError(f"table name {table!r}: SQLite tables have no schema part")
        self.path, self.table = path, table
        self.name = f"{path} table {table}"
        self._lock = -1
        self._db: sqlite3.Connection | None = None

    def open(self, schema: Schema, keyed: bool) -> tuple[int, str | None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.path}.{self.table}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            lock(fd, self.name)
            db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        except BaseException:
            os.close(fd)
            raise
        self._lock, self._db = fd, db
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers see the checkpoints as they land
            db.execute(
                f'CREATE TABLE IF NOT EXISTS "{self.table}" ("index" INTEGER PRIMARY KEY, '
                '"file" TEXT, "outputs" TEXT, "error" TEXT)'
            )
            found = [row[1] for row in db.execute(f'PRAGMA table_info("{self.table}")')]
            if tuple(found) != COLUMNS:
                raise _mismatch(self.name, found)
            rows, top = db.execute(f'SELECT count(*), max("index") FROM "{self.table}"').fetchone()
            db.commit()
        except sqlite3.Error as exc:
            raise BatchError(f"{self.name}: {exc}") from exc
        return _resumed(self.name, rows, top, lambda: self._file(top))

    def _file(self, index: int) -> str | None:
        assert self._db is not None
        row = self._db.execute(
            f'SELECT "file" FROM "{self.table}" WHERE "index" = ?', (index,)
        ).fetchone()
        return row[0] if row else None

    def write_rows(self, records: Sequence[Record]) -> None:
        assert self._db is not None
        try:
            with self._db:
                self._db.executemany(
                    f'INSERT INTO "{self.table}" VALUES (?, ?, ?, ?)',
                    [(r.index, r.file, _outputs(r), r.error) for r in records],
                )
        except sqlite3.Error as exc:
            raise BatchError(f"{self.name}: {exc}") from exc

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1


class PostgreSQLTable(RowSink):
    def __init__(self, url: str, table: str) -> None:
        self.url, self.table = url, table
        parts = urlsplit(url)
        where = parts.hostname or "localhost"
        self.name = f"PostgreSQL {where}{parts.path or ''} table {table}"
        self._db: Any = None

    def open(self, schema: Schema, keyed: bool) -> tuple[int, str | None]:
        import psycopg
        from psycopg import sql

        try:
            db: Any = psycopg.connect(self.url, autocommit=True)
        except psycopg.Error as exc:
            raise BatchError(f"{self.name}: cannot connect: {exc}") from exc
        self._db = db
        self._ident = sql.Identifier(*self.table.split("."))
        try:
            # Session-level: held across the run's transactions, gone with the connection.
            (locked,) = db.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                (f"cinfer batch {self.table}",),
            ).fetchone()
            if not locked:
                raise OutputLocked(
                    f"{self.name} is being written by another cinfer batch run (it holds the "
                    "advisory lock); this run leaves it alone: rerun once that one has "
                    "finished, to resume where it stops"
                )
            self._create(db, sql)
            found = [
                row[0]
                for row in db.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                    "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    (sql.Identifier(*self.table.split(".")).as_string(db),),
                )
            ]
            if tuple(found) != COLUMNS:
                raise _mismatch(self.name, found)
            rows, top = db.execute(
                sql.SQL('SELECT count(*), max("index") FROM {}').format(self._ident)
            ).fetchone()
        except psycopg.Error as exc:
            raise BatchError(f"{self.name}: {exc}") from exc
        return _resumed(self.name, rows, top, lambda: self._file(top))

    def _create(self, db: Any, sql: Any) -> None:
        """The table, when it is not there. `json`, not `jsonb`: jsonb parses every number
        into a numeric, and with lz4 rather than pglz for the values PostgreSQL compresses:
        rows of 1024 floats went in at 2,000 a second as jsonb, 9,000 as json with lz4
        (COPY, 4,096 rows). A server without lz4 (or before PostgreSQL 14) keeps its own."""
        import psycopg

        statement = (
            'CREATE TABLE IF NOT EXISTS {} ("index" bigint PRIMARY KEY, "file" text, '
            '"outputs" json{}, "error" text)'
        )
        try:
            db.execute(sql.SQL(statement.format("{}", " COMPRESSION lz4")).format(self._ident))
        except (psycopg.errors.FeatureNotSupported, psycopg.errors.SyntaxError):
            db.execute(sql.SQL(statement.format("{}", "")).format(self._ident))

    def _file(self, index: int) -> str | None:
        from psycopg import sql

        row = self._db.execute(
            sql.SQL('SELECT "file" FROM {} WHERE "index" = %s').format(self._ident), (index,)
        ).fetchone()
        return row[0] if row else None

    def write_rows(self, records: Sequence[Record]) -> None:
        import psycopg
        from psycopg import sql

        statement = sql.SQL('COPY {} ("index", "file", "outputs", "error") FROM STDIN')
        try:
            with (
                self._db.transaction(),
                self._db.cursor() as cursor,
                cursor.copy(statement.format(self._ident)) as copy,
            ):
                for r in records:
                    copy.write_row((r.index, r.file, _outputs(r), r.error))
        except psycopg.Error as exc:
            raise BatchError(f"{self.name}: {exc}") from exc

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _resumed(name: str, rows: int, top: int | None, file: Any) -> tuple[int, str | None]:
    if not rows:
        return 0, None
    if top != rows - 1:
        raise BatchError(
            f"{name} holds {rows} rows but the highest index is {top}: rows are missing, so "
            "it is not the output of one run of this input (give another table)"
        )
    return rows, file()
