"""Console accounts and the audit log, in the server's SQLite file (auth/schema.py, migration 3).

An account is a username, a password hashed with scrypt (memory-hard: 32 MiB and about
0.1 s a hash here, run off the event loop), a role (`admin` changes things, `viewer` sees
everything but secrets) and a session version: a console session carries the version it was
issued under, and a password change, a role change or "sign out everywhere" raises it, which
ends every other session of that account at its next request.

The first admin is created only while no admin exists, in one write transaction: two set-ups
racing (two browsers, two replicas on one file) create exactly one. The last admin can be
neither demoted nor deleted. Usernames are ASCII (no look-alike names); passwords are 8 to
1,024 characters (the cap bounds the work one sign-in can ask of the server).

The audit log records what console users and the admin API change: who, what, which target,
the details and from which address.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import Conflict, InvalidRequest, NotFound
from .sqlite import SQLiteFile, uncancellable

Role = Literal["admin", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "viewer")

USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
"""1 to 64 ASCII letters, digits and . _ @ -, starting with a letter or digit."""
MIN_PASSWORD, MAX_PASSWORD = 8, 1024

#: scrypt's cost: N = 2**15, r = 8 (32 MiB of memory a hash), p = 1.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024

KEY_BYTES = 32


@dataclass(frozen=True)
class Account:
    username: str
    role: Role
    session_version: int
    created_at: float
    changed_at: float

    @property
    def admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class AuditEntry:
    id: int
    time: float
    actor: str
    action: str
    target: str
    detail: str
    client: str


def check_username(username: str) -> str:
    if not isinstance(username, str) or not USERNAME.fullmatch(username):
        raise InvalidRequest(
            "a username is 1 to 64 ASCII letters, digits and . _ @ -, "
            "starting with a letter or digit"
        )
    return username


def check_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidRequest(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters long")
    return password


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise InvalidRequest(f"a role is {' or '.join(ROLES)}, not {role!r}")
    return role


def hash_password(password: str, salt: bytes | None = None) -> str:
    """Blocking (about 0.1 s): ``scrypt$N$r$p$<salt>$<hash>``, base64 without padding."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=SCRYPT_MAXMEM
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Blocking: whether `password` is the one `stored` was hashed from."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=SCRYPT_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):  # a damaged row: no password opens it
        return False
    return hmac.compare_digest(got, expected)


@functools.cache
def _dummy() -> str:
    """Verified against when the username is unknown: a sign-in takes as long either way."""
    return hash_password("not a password", b"\0" * 16)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


_COLUMNS = "username, role, session_version, created_at, changed_at"


def _account(row: Any) -> Account:
    username, role, version, created, changed = row
    return Account(str(username), role, int(version), float(created), float(changed))


class Accounts:
    """The console's accounts and the audit log, on the server's database file."""

    def __init__(self, file: SQLiteFile) -> None:
        self.file = file

    async def all(self) -> list[Account]:
        rows = await self.file.fetch(f"SELECT {_COLUMNS} FROM accounts ORDER BY username")
        return [_account(row) for row in rows]

    async def find(self, username: str) -> Account | None:
        rows = await self.file.fetch(
            f"SELECT {_COLUMNS} FROM accounts WHERE username = ?", (username,)
        )
        return _account(rows[0]) if rows else None

    async def get(self, username: str) -> Account:
        account = await self.find(username)
        if account is None:
            raise NotFound(f"no console account {username!r}")
        return account

    async def has_admin(self) -> bool:
        rows = await self.file.fetch("SELECT 1 FROM accounts WHERE role = 'admin' LIMIT 1")
        return bool(rows)

    async def authenticate(self, username: str, password: str) -> Account | None:
        """The account when `password` is its password; None otherwise (unknown or wrong,
        in the same time)."""
        if not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return None
        rows = await self.file.fetch(
            "SELECT password FROM accounts WHERE username = ?", (username,)
        )
        stored = str(rows[0][0]) if rows else await asyncio.to_thread(_dummy)
        ok = await asyncio.to_thread(verify_password, password, stored)
        return await self.find(username) if ok and rows else None

    async def create_first_admin(self, username: str, password: str) -> Account | None:
        """Create the first admin; None when an admin exists already (nothing is written)."""
        return await self._create(check_username(username), check_password(password), "admin", True)

    async def create(self, username: str, password: str, role: str) -> Account:
        account = await self._create(
            check_username(username), check_password(password), check_role(role), False
        )
        assert account is not None
        return account

    async def _create(
        self, username: str, password: str, role: Role, only_first: bool
    ) -> Account | None:
        hashed = await asyncio.to_thread(hash_password, password)
        return await self._insert(username, hashed, role, only_first)

    @uncancellable
    async def _insert(
        self, username: str, hashed: str, role: Role, only_first: bool
    ) -> Account | None:
        now = self.file.clock()
        async with self.file.transaction() as conn:
            if only_first:
                rows = list(
                    await conn.execute_fetchall("SELECT 1 FROM accounts WHERE role = 'admin'")
                )
                if rows:
                    return None
            taken = list(
                await conn.execute_fetchall(
                    "SELECT 1 FROM accounts WHERE username = ?", (username,)
                )
            )
            if taken:
                raise Conflict(f"a console account named {username!r} already exists")
            await conn.execute(
                "INSERT INTO accounts VALUES (?, ?, ?, 1, ?, ?)",
                (username, hashed, role, now, now),
            )
        return Account(username, role, 1, now, now)

    async def set_password(self, username: str, password: str) -> Account:
        """A new password; every session of the account ends."""
        hashed = await asyncio.to_thread(hash_password, check_password(password))
        return await self._change(username, "password = ?", (hashed,))

    async def set_role(self, username: str, role: str) -> Account:
        """A new role; every session of the account ends. The last admin stays one."""
        checked = check_role(role)
        if checked != "admin":
            await self._keep_an_admin(username, "demoted")
        return await self._change(username, "role = ?", (checked,))

    async def end_sessions(self, username: str) -> Account:
        return await self._change(username, "", ())

    @uncancellable
    async def _change(self, username: str, assignment: str, values: tuple[Any, ...]) -> Account:
        sets = f"{assignment}, " if assignment else ""
        async with self.file.transaction() as conn:
            cursor = await conn.execute(
                f"UPDATE accounts SET {sets}session_version = session_version + 1, "
                "changed_at = ? WHERE username = ?",
                (*values, self.file.clock(), username),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"no console account {username!r}")
        return await self.get(username)

    async def _keep_an_admin(self, username: str, verb: str) -> None:
        rows = await self.file.fetch(
            "SELECT username FROM accounts WHERE role = 'admin' AND username != ? LIMIT 1",
            (username,),
        )
        account = await self.get(username)
        if account.admin and not rows:
            raise Conflict(f"{username!r} is the last admin and cannot be {verb}")

    @uncancellable
    async def delete(self, username: str) -> None:
        await self._keep_an_admin(username, "deleted")
        async with self.file.transaction() as conn:
            cursor = await conn.execute("DELETE FROM accounts WHERE username = ?", (username,))
            if cursor.rowcount == 0:
                raise NotFound(f"no console account {username!r}")

    # -- the server's keys --------------------------------------------------------------------

    @uncancellable
    async def key(self, name: str) -> bytes:
        """The server key `name`, generated (32 random bytes) the first time it is asked for;
        every process on the file gets the same one."""
        async with self.file.transaction() as conn:
            await conn.execute(
                "INSERT OR IGNORE INTO server_keys VALUES (?, ?)",
                (name, secrets.token_bytes(KEY_BYTES)),
            )
            rows = list(
                await conn.execute_fetchall("SELECT value FROM server_keys WHERE name = ?", (name,))
            )
        return bytes(rows[0][0])

    # -- the audit log ------------------------------------------------------------------------

    @uncancellable
    async def audit(
        self, actor: str, action: str, target: str, detail: str = "", client: str = ""
    ) -> None:
        async with self.file.transaction() as conn:
            await conn.execute(
                "INSERT INTO audit_log (time, actor, action, target, detail, client) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (self.file.clock(), actor, action, target, detail, client),
            )

    async def audit_log(
        self, limit: int = 100, before: int | None = None, actor: str | None = None
    ) -> list[AuditEntry]:
        """The newest entries first; `before` an entry id, for the next page."""
        where: list[str] = []
        values: list[Any] = []
        if before is not None:
            where.append("id < ?")
            values.append(before)
        if actor:
            where.append("actor = ?")
            values.append(actor)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self.file.fetch(
            f"SELECT id, time, actor, action, target, detail, client FROM audit_log {clause} "
            "ORDER BY id DESC LIMIT ?",
            (*values, limit),
        )
        return [AuditEntry(*row) for row in rows]
