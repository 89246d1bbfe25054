"""The token database's shape: its schema and migrations, and how a token is a row.

`MIGRATIONS[n]` takes a database from schema version n to n + 1 (auth/store.py applies them
at open). `token_row` and `row_token` turn a `Token` into a row of the tokens table and back;
`row_token` reads whatever a row holds, so one damaged row never fails a listing.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from .tokens import PERMISSIONS, Status, Token, canonical_network, iso

log = logging.getLogger("cinfer")

T = TypeVar("T")

MIGRATIONS: list[list[str]] = [
    # 1 (issue 5): tokens and the per-request usage log.
    [
        """CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            secret_sha256 BLOB NOT NULL,
            remark TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            expires_at REAL,
            status TEXT NOT NULL CHECK (status IN ('active', 'paused', 'revoked')),
            scopes TEXT NOT NULL,
            models TEXT NOT NULL,
            ips TEXT NOT NULL,
            rate_limit INTEGER NOT NULL DEFAULT 0,
            monthly_quota INTEGER NOT NULL DEFAULT 0,
            usage_month TEXT NOT NULL DEFAULT '',
            used INTEGER NOT NULL DEFAULT 0,
            last_used_at REAL
        )""",
        """CREATE TABLE usage_log (
            id INTEGER PRIMARY KEY,
            time REAL NOT NULL,
            token_id TEXT,
            model TEXT,
            version TEXT,
            status INTEGER NOT NULL,
            latency_ms REAL NOT NULL,
            client TEXT NOT NULL
        )""",
        "CREATE INDEX usage_log_time ON usage_log (time)",
    ],
    # 2 (issue 12): rate buckets kept across a clean restart, and requests refused without
    # a token counted per minute, address and status instead of a log row each.
    [
        """CREATE TABLE rate_buckets (
            token_id TEXT PRIMARY KEY,
            level REAL NOT NULL,
            stamp REAL NOT NULL
        )""",
        """CREATE TABLE refusals (
            minute INTEGER NOT NULL,
            client TEXT NOT NULL,
            status INTEGER NOT NULL,
            requests INTEGER NOT NULL,
            PRIMARY KEY (minute, client, status)
        ) WITHOUT ROWID""",
    ],
    # 3 (issue 13): console accounts, the audit log of what they change, and the server's
    # generated keys (the console's cookie-signing key), shared by every process on the file.
    [
        """CREATE TABLE accounts (
            username TEXT PRIMARY KEY,
            password TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
            session_version INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL,
            changed_at REAL NOT NULL
        )""",
        """CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY,
            time REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL,
            client TEXT NOT NULL
        )""",
        "CREATE INDEX audit_log_time ON audit_log (time)",
        """CREATE TABLE server_keys (
            name TEXT PRIMARY KEY,
            value BLOB NOT NULL
        )""",
    ],
]

COLUMNS = (
    "id, name, secret_sha256, remark, created_at, expires_at, status, scopes, models, ips, "
    "rate_limit, monthly_quota, usage_month, used, last_used_at"
)


def token_row(token: Token) -> tuple[Any, ...]:
    return (
        token.id,
        token.name,
        token.secret_hash,
        token.remark,
        token.created_at,
        token.expires_at,
        token.status,
        json.dumps(sorted(token.permissions)),
        json.dumps(list(token.models)),
        json.dumps(list(token.ips)),
        token.rate_limit,
        token.monthly_quota,
        token.usage_month,
        token.used,
        token.last_used_at,
    )


def row_token(row: Sequence[Any]) -> Token:
    """A row as a Token, whatever it holds.

    A value this version cannot use (written by an older one, or by hand in SQLite) is logged
    and replaced, and the token then grants nothing (no scopes) until it is fixed, so that one
    row never fails a listing, show, revoke or delete, nor widens what a token may do. An
    expiry beyond what a date can show still holds, and is shown as null (issue 12, finding 4).
    """
    token_id = str(row[0])
    problems: list[str] = []

    def read(index: int, convert: Callable[[Any], T], default: T) -> T:
        try:
            return convert(row[index])
        except (TypeError, ValueError, OverflowError):  # json.JSONDecodeError is a ValueError
            # Never the value of secret_sha256: it is derived from the secret.
            shown = "(not a 32-byte BLOB)" if index == 2 else repr(row[index])[:80]
            problems.append(f"{COLUMNS.split(', ')[index]} {shown}")
            return default

    token = Token(
        id=token_id,
        name=read(1, _text, token_id),
        secret_hash=read(2, _digest, b""),
        remark=read(3, _text, ""),
        created_at=read(4, _moment, 0.0),
        expires_at=read(5, _optional_moment, None),
        status=read(6, _status, "paused"),
        permissions=read(7, _permissions, frozenset()),
        models=read(8, _globs, ()),
        ips=read(9, _networks, ()),
        rate_limit=read(10, _count, 0),
        monthly_quota=read(11, _count, 0),
        usage_month=read(12, _text, ""),
        used=read(13, _count, 0),
        last_used_at=read(14, _optional_moment, None),
    )
    if problems:
        token.permissions = frozenset()
        log.warning(
            "token %s in the token database: cannot use %s; it grants nothing until fixed "
            "(cinfer tokens update, or delete it)",
            token_id,
            ", ".join(problems),
        )
    for column, value in (("created_at", token.created_at), ("expires_at", token.expires_at)):
        if value is not None and iso(value) is None:
            log.warning(
                "token %s in the token database: %s %r is not a date between 0001 and 9999; "
                "shown as null",
                token_id,
                column,
                value,
            )
    return token


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _digest(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise TypeError("secret_sha256")
    return value


def _moment(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise TypeError(value)
    return float(value)


def _optional_moment(value: Any) -> float | None:
    return None if value is None else _moment(value)


def _status(value: Any) -> Status:
    if value not in ("active", "paused", "revoked"):
        raise ValueError(value)
    return cast("Status", value)


def _strings(value: Any) -> list[str]:
    items = json.loads(_text(value))
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise TypeError(value)
    return items


def _permissions(value: Any) -> frozenset[str]:
    found = frozenset(_strings(value))
    if not found <= set(PERMISSIONS):
        raise ValueError(value)
    return found


def _globs(value: Any) -> tuple[str, ...]:
    return tuple(_strings(value))


def _networks(value: Any) -> tuple[str, ...]:
    return tuple(canonical_network(item) for item in _strings(value))


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(value)
    return value
