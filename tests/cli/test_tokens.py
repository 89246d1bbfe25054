"""`cinfer tokens`, run in-process over a real SQLite file (test_auth_live.py runs it for real)."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from server.auth.tokens import split
from server.cli import main
from server.cli.serve import is_loopback


class CLI:
    def __init__(self, tmp_path: Path) -> None:
        self.config = tmp_path / "config.toml"
        self.config.write_text('[auth]\ndatabase = "state/tokens.db"\n')
        # No CINFER_* variable of the machine running the tests reaches the command.
        self.runner = CliRunner(
            env={name: None for name in os.environ if name.startswith("CINFER_")}
        )

    def __call__(self, *argv: str, code: int = 0) -> tuple[str, str]:
        result = self.runner.invoke(main, ["tokens", *argv, "--config", str(self.config)])
        assert result.exit_code == code, (result.output, result.exception)
        return result.stdout, result.stderr

    def json(self, *argv: str) -> dict:
        out, _ = self(*argv, "--json")
        return orjson.loads(out)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[CLI]:
    # The command sets up logging on the runner's stderr, which is closed once it returns.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield CLI(tmp_path)
    root.handlers[:] = handlers
    root.setLevel(level)


def test_create_prints_the_token_once_and_the_database_sits_beside_the_config(
    cli: CLI, tmp_path: Path
) -> None:
    out, err = cli(
        "create",
        "--name",
        "ci",
        "--scope",
        "read, infer",
        "--models",
        "resnet*,iris",
        "--ips",
        "10.0.0.0/8,2001:db8::/32",
        "--rate-limit",
        "60",
        "--monthly-quota",
        "1000",
        "--expires",
        "2099-01-31",
        "--remark",
        "nightly 🚀",
    )
    token = out.strip()
    assert split(token) is not None and "\n" not in token
    assert "created token 'ci'" in err and "only time it is shown" in err
    assert (tmp_path / "state" / "tokens.db").is_file()
    shown = cli.json("show", "ci")
    assert shown["scopes"] == ["infer", "read"] and shown["models"] == ["resnet*", "iris"]
    assert shown["ips"] == ["10.0.0.0/8", "2001:db8::/32"]
    assert (shown["rate_limit"], shown["monthly_quota"]) == (60, 1000)
    assert shown["expires_at"] == "2099-02-01T00:00:00Z" and shown["remark"] == "nightly 🚀"
    listing, _ = cli("list")
    assert "ci" in listing and split(token)[1] not in listing  # type: ignore[index]


def test_every_action_by_name_or_id(cli: CLI) -> None:
    created = cli.json("create", "--name", "ci")
    token_id = created["id"]
    assert cli.json("pause", "ci")["status"] == "paused"
    assert cli.json("resume", token_id)["status"] == "active"
    assert cli.json("extend", "ci", "--expires", "30d")["expires_at"] is not None
    assert cli.json("extend", "ci", "--expires", "never")["expires_at"] is None
    changed = cli.json("update", "ci", "--name", "nightly", "--models", "", "--rate-limit", "5")
    assert (changed["name"], changed["models"], changed["rate_limit"]) == ("nightly", [], 5)
    assert cli.json("reset-usage", "nightly")["used_this_month"] == 0
    assert cli.json("revoke", token_id)["status"] == "revoked"
    _, err = cli("delete", "nightly")
    assert "deleted token 'nightly'" in err
    _, err = cli("list")
    assert "no tokens" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create", "--name", "x'; DROP TABLE tokens; --"], "invalid token: name: token name"),
        (["create", "--name", "a", "--ips", "10.0.0.1/8"], "did you mean 10.0.0.0/8?"),
        (["create", "--name", "a", "--scope", "root"], "scopes.0: Input should be 'infer'"),
        (["create", "--name", "a", "--expires", "2001-01-01"], "is in the past"),
        (["create", "--name", "\u0430dmin"], "name: token name '\u0430dmin' must be 1-64 ASCII"),
        (["create", "--name", "a", "--models", "\u0441at*"], "model pattern '\u0441at*' must be"),
        (["create", "--name", "a", "--expires", "999999w"], "expires '999999w' is beyond"),
        (["show", "nobody"], "no token with id or name 'nobody'"),
        (["extend", "nobody", "--expires", "1d"], "no token with id or name 'nobody'"),
    ],
)
def test_errors_name_what_was_wrong_and_exit_1(cli: CLI, argv: list[str], message: str) -> None:
    out, err = cli(*argv, code=1)
    assert out == "" and message in err and "Traceback" not in err


def test_a_name_is_taken_once(cli: CLI) -> None:
    cli("create", "--name", "ci")
    _, err = cli("create", "--name", "ci", code=1)
    assert "a token named 'ci' already exists" in err


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ["127.0.0.1", "::1", "localhost", "127.1.2.3"])
    assert not any(is_loopback(h) for h in ["0.0.0.0", "::", "10.0.0.1", "example.com"])


def test_list_aligns_its_columns_for_wide_names_too(cli: CLI) -> None:
    cli("create", "--name", "ci", "--models", "iris")
    cli("create", "--name", "tokyo-frontend", "--scope", "read,infer", "--expires", "30d")
    # Names are ASCII now (issue 12, finding 11); a wide one is from an older version.
    with sqlite3.connect(cli.config.parent / "state" / "tokens.db") as conn:
        conn.execute("UPDATE tokens SET name = '東京-frontend' WHERE name = 'tokyo-frontend'")
    listing, _ = cli("list")
    header, *rows = listing.splitlines()
    assert header.split() == [
        "id", "name", "status", "scopes", "models", "rate_limit", "monthly_quota",
        "used_this_month", "expires_at", "last_used_at",
    ]  # fmt: skip
    assert len(rows) == 2

    def column(line: str, text: str) -> int:
        """Terminal column where `text` starts (CJK characters are two wide)."""
        before = line[: line.index(text)]
        return len(before) + sum(1 for c in before if "\u4e00" <= c <= "\u9fff")

    assert {
        column(line, word) for line, word in zip([header, *rows], ["status", "active", "active"])
    } == {column(header, "status")}
    assert column(rows[0], "iris") == column(rows[1], "*") == column(header, "models")
    assert rows[0].split()[2:4] == ["active", "infer"] and rows[1].split()[3] == "infer,read"
