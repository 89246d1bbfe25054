"""Console accounts and the audit log in the server's database (server/auth/accounts.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from server.auth.accounts import Accounts, hash_password, verify_password
from server.auth.store import Database
from server.errors import Conflict, InvalidRequest, NotFound

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery"


def test_passwords_are_salted_scrypt_hashes() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second and first.startswith("scrypt$32768$8$1$")
    assert PASSWORD not in first
    assert verify_password(PASSWORD, first) and verify_password(PASSWORD, second)
    assert not verify_password(PASSWORD + " ", first)
    for damaged in ["", "scrypt$x", "md5$1$2$3$4$5", first.replace("scrypt$32768", "scrypt$3")]:
        assert not verify_password(PASSWORD, damaged)


async def test_the_first_admin_is_created_once_even_from_two_processes(tmp_path: Path) -> None:
    path = tmp_path / "cinfer.db"
    async with Database(path) as one, Database(path) as two:  # two connections: two servers
        results = await asyncio.gather(
            Accounts(one).create_first_admin("alice", PASSWORD),
            Accounts(two).create_first_admin("bob", PASSWORD),
        )
        assert sorted(r is None for r in results) == [False, True]
        assert len(await Accounts(one).all()) == 1
        assert await Accounts(two).create_first_admin("carol", PASSWORD) is None


async def test_sign_in_checks_the_password_and_bounds_its_length(tmp_path: Path) -> None:
    async with Database(tmp_path / "cinfer.db") as database:
        accounts = Accounts(database)
        await accounts.create("alice", PASSWORD, "viewer")
        found = await accounts.authenticate("alice", PASSWORD)
        assert found is not None and found.role == "viewer" and not found.admin
        assert await accounts.authenticate("alice", "wrong password") is None
        assert await accounts.authenticate("nobody", PASSWORD) is None
        assert await accounts.authenticate("alice", "x" * 2000) is None


async def test_names_passwords_and_roles_are_checked(tmp_path: Path) -> None:
    async with Database(tmp_path / "cinfer.db") as database:
        accounts = Accounts(database)
        for name in ["", "\u0430dmin", "a b", "-lead", "x" * 65]:
            with pytest.raises(InvalidRequest, match="ASCII"):
                await accounts.create(name, PASSWORD, "admin")
        with pytest.raises(InvalidRequest, match="8 to 1024"):
            await accounts.create("alice", "short", "admin")
        with pytest.raises(InvalidRequest, match="admin or viewer"):
            await accounts.create("alice", PASSWORD, "root")
        await accounts.create("alice", PASSWORD, "admin")
        with pytest.raises(Conflict, match="already exists"):
            await accounts.create("alice", PASSWORD, "viewer")


async def test_changes_raise_the_session_version_and_the_last_admin_stays(tmp_path: Path) -> None:
    async with Database(tmp_path / "cinfer.db") as database:
        accounts = Accounts(database)
        alice = await accounts.create("alice", PASSWORD, "admin")
        assert alice.session_version == 1
        assert (await accounts.set_password("alice", "another password")).session_version == 2
        assert await accounts.authenticate("alice", PASSWORD) is None
        assert (await accounts.end_sessions("alice")).session_version == 3
        with pytest.raises(Conflict, match="last admin"):
            await accounts.set_role("alice", "viewer")
        with pytest.raises(Conflict, match="last admin"):
            await accounts.delete("alice")
        await accounts.create("bob", PASSWORD, "admin")
        demoted = await accounts.set_role("alice", "viewer")
        assert demoted.role == "viewer" and demoted.session_version == 4
        await accounts.delete("alice")
        with pytest.raises(NotFound):
            await accounts.set_password("alice", PASSWORD)


async def test_a_server_key_is_made_once_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "cinfer.db"
    async with Database(path) as one, Database(path) as two:
        keys = await asyncio.gather(Accounts(one).key("k"), Accounts(two).key("k"))
        assert keys[0] == keys[1] and len(keys[0]) == 32
        assert await Accounts(one).key("other") != keys[0]


async def test_the_audit_log_pages_newest_first(tmp_path: Path) -> None:
    async with Database(tmp_path / "cinfer.db") as database:
        accounts = Accounts(database)
        for n in range(5):
            await accounts.audit("alice" if n % 2 else "bob", "model.edit", f"m{n}", "", "10.0.0.1")
        page = await accounts.audit_log(limit=2)
        assert [e.target for e in page] == ["m4", "m3"]
        rest = await accounts.audit_log(limit=10, before=page[-1].id)
        assert [e.target for e in rest] == ["m2", "m1", "m0"]
        assert [e.target for e in await accounts.audit_log(actor="alice")] == ["m3", "m1"]


async def test_no_password_or_hash_reaches_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    async with Database(tmp_path / "cinfer.db") as database:
        await Accounts(database).create("alice", PASSWORD, "admin")
    with sqlite3.connect(tmp_path / "cinfer.db") as conn:
        stored = conn.execute("SELECT password FROM accounts").fetchone()[0]
    assert PASSWORD not in caplog.text and stored not in caplog.text
