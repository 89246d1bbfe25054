from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from server.auth.schema import MIGRATIONS
from server.auth.store import Database
from server.auth.tokens import TokenPatch, TokenSpec, split
from server.errors import Conflict, DatabaseError, InvalidRequest, NotFound

pytestmark = pytest.mark.anyio

NOW = 1_795_000_000.0  # 2026-11-18


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "cinfer.db"


def clock() -> float:
    return NOW


async def test_a_new_file_is_created_with_its_folder_in_wal_mode_at_the_latest_schema(
    path: Path,
) -> None:
    async with Database(path, clock=clock):
        pass
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version")]
        assert versions == list(range(1, len(MIGRATIONS) + 1))
    async with Database(path, clock=clock):  # opening again migrates nothing
        pass
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == len(MIGRATIONS)


async def test_a_file_from_a_newer_server_is_refused(path: Path) -> None:
    async with Database(path):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99)")
    with pytest.raises(DatabaseError, match=r"has schema version 99, newer than this cinfer"):
        await Database(path).open()


async def test_a_file_that_is_not_sqlite_is_a_clean_error(path: Path) -> None:
    path.parent.mkdir()
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseError, match=rf"token database {path}: file is not a database"):
        await Database(path).open()


async def test_create_find_update_and_delete(path: Path) -> None:
    async with Database(path, clock=clock) as db:
        token, plaintext = await db.create(
            TokenSpec(name="ci", scopes=["infer", "read"], models=["iris*"], expires="30d")
        )
        parts = split(plaintext)
        assert parts is not None and parts[0] == token.id
        assert token.expires_at == NOW + 30 * 86400
        assert (await db.find("ci")).id == token.id
        assert (await db.find(token.id)).name == "ci"
        changed = await db.update("ci", TokenPatch(remark="nightly", models=[], rate_limit=5))
        assert (changed.remark, changed.models, changed.rate_limit) == ("nightly", (), 5)
        assert changed.permissions == frozenset({"infer", "read"})  # untouched
        assert (await db.extend(token.id, "never")).expires_at is None
        assert (await db.set_status("ci", "paused")).status == "paused"
        assert (await db.set_status("ci", "active")).status == "active"
        assert (await db.set_status("ci", "revoked")).status == "revoked"
        assert (await db.set_status("ci", "revoked")).status == "revoked"  # idempotent
        with pytest.raises(
            Conflict, match=r"token 'ci' \(\w+\) is revoked; revocation is permanent"
        ):
            await db.set_status("ci", "active")
        await db.delete("ci")
        with pytest.raises(NotFound, match="no token with id or name 'ci'"):
            await db.find("ci")


async def test_names_are_unique(path: Path) -> None:
    async with Database(path, clock=clock) as db:
        await db.create(TokenSpec(name="a"))
        await db.create(TokenSpec(name="b"))
        with pytest.raises(Conflict, match="a token named 'a' already exists"):
            await db.create(TokenSpec(name="a"))
        with pytest.raises(Conflict, match="a token named 'b' already exists"):
            await db.update("a", TokenPatch(name="b"))
        with pytest.raises(InvalidRequest, match="is in the past"):
            await db.extend("a", "2020-01-01")


async def test_an_expiry_out_of_range_is_refused_before_anything_is_stored(path: Path) -> None:
    async with Database(path, clock=clock) as db:
        await db.create(TokenSpec(name="a", expires="30d"))
        for expires in ["999999w", "9999-12-31", "9999-12-31T23:59:59-14:00"]:
            with pytest.raises(InvalidRequest, match=f"expires '{expires}' is beyond"):
                await db.create(TokenSpec(name="late", expires=expires))
            with pytest.raises(InvalidRequest, match=f"expires '{expires}' is beyond"):
                await db.update("a", TokenPatch(status="paused", expires=expires))
        [token] = await db.tokens()
        assert (token.name, token.status, token.expires_at) == ("a", "active", NOW + 30 * 86400)


@pytest.mark.parametrize(
    ("column", "value", "logged"),
    [
        ("scopes", "infer", "scopes 'infer'"),
        ("scopes", '["infer", "root"]', "scopes"),
        ("models", "[1, 2]", "models '[1, 2]'"),
        ("ips", '["10.0.0.1/8"]', "ips"),
        ("rate_limit", "ten", "rate_limit 'ten'"),
        ("monthly_quota", -1, "monthly_quota -1"),
        ("expires_at", "soon", "expires_at 'soon'"),
        ("secret_sha256", "text", "secret_sha256 (not a 32-byte BLOB)"),
    ],
)
async def test_a_row_this_version_cannot_use_lists_and_grants_nothing(
    path: Path, column: str, value: object, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Database(path, clock=clock) as db:
        await db.create(TokenSpec(name="good"))
        token, _ = await db.create(TokenSpec(name="odd", scopes=["infer", "admin"]))
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE tokens SET {column} = ? WHERE name = 'odd'", (value,))
    async with Database(path, clock=clock) as db:
        good, odd = await db.tokens()
        assert good.permissions == frozenset({"infer"})
        assert odd.id == token.id and odd.permissions == frozenset()
        assert odd.public(NOW)["scopes"] == []
        assert f"token {token.id} in the token database: cannot use {logged}" in caplog.text
        assert (await db.find("odd")).permissions == frozenset()
        assert (await db.set_status("odd", "revoked")).status == "revoked"
        await db.delete("odd")
        assert [t.name for t in await db.tokens()] == ["good"]


async def test_usage_is_added_as_deltas_so_two_writers_never_overwrite_each_other(
    path: Path,
) -> None:
    async with Database(path, clock=clock) as server, Database(path, clock=clock) as other:
        token, _ = await server.create(TokenSpec(name="a"))
        await server.save_usage([(token.id, "2026-11", 3, NOW)], [])
        await other.save_usage([(token.id, "2026-11", 4, NOW + 5)], [])
        stored = await server.find("a")
        assert (stored.usage_month, stored.used, stored.last_used_at) == ("2026-11", 7, NOW + 5)
        # A new month starts from the new count; a late count for the old month is dropped.
        await server.save_usage([(token.id, "2026-12", 2, NOW + 10)], [])
        await other.save_usage([(token.id, "2026-11", 9, NOW + 1)], [])
        stored = await server.find("a")
        assert (stored.usage_month, stored.used, stored.last_used_at) == ("2026-12", 2, NOW + 10)
        await other.reset_usage("a")
        assert (await server.find("a")).used == 0


async def test_data_version_moves_when_another_connection_commits(path: Path) -> None:
    async with Database(path, clock=clock) as server, Database(path, clock=clock) as cli:
        before = await server.data_version()
        await server.create(TokenSpec(name="own"))
        assert await server.data_version() == before  # its own writes do not count
        await cli.create(TokenSpec(name="other"))
        assert await server.data_version() != before


async def test_usage_log_aggregates_per_day_token_and_model_and_prunes(path: Path) -> None:
    day = 86400.0
    async with Database(path, clock=clock) as db:
        a, _ = await db.create(TokenSpec(name="a"))
        rows = [
            (NOW, a.id, "iris", None, 200, 1.0, "10.0.0.1"),
            (NOW + 1, a.id, "iris", "2", 200, 3.0, "10.0.0.1"),
            (NOW + 2, a.id, "iris", None, 429, 0.1, "10.0.0.1"),
            (NOW + 3, None, "iris", None, 401, 0.1, "10.0.0.9"),
            (NOW - 40 * day, a.id, "iris", None, 200, 1.0, "10.0.0.1"),
        ]
        await db.save_usage([], rows)
        usage = await db.usage(NOW - 1, NOW + day)
        assert [(u["token_name"], u["model"], u["requests"], u["errors"]) for u in usage] == [
            (None, "iris", 1, 1),
            ("a", "iris", 3, 1),
        ]
        assert usage[1]["day"] == "2026-11-18" and usage[1]["mean_latency_ms"] == pytest.approx(
            1.367, abs=1e-3
        )
        assert await db.usage(NOW - 1, NOW + day, token="a", model="digits") == []
        assert await db.prune(NOW - 30 * day, batch=2) == 1
        assert len(await db.usage(0, NOW + day)) == 2
