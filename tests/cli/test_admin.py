"""`cinfer admin`: console accounts from the command line, over a real SQLite file."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from server.auth.accounts import verify_password
from server.cli import main

PASSWORD = "correct horse battery"


class CLI:
    def __init__(self, tmp_path: Path) -> None:
        self.config = tmp_path / "config.toml"
        self.config.write_text('[auth]\ndatabase = "state/cinfer.db"\n')
        self.database = tmp_path / "state" / "cinfer.db"
        self.runner = CliRunner(
            env={name: None for name in os.environ if name.startswith("CINFER_")}
        )

    def __call__(self, *argv: str, stdin: str | None = None, code: int = 0) -> tuple[str, str]:
        result = self.runner.invoke(main, ["admin", *argv, "--config", str(self.config)], stdin)
        assert result.exit_code == code, (result.output, result.exception)
        return result.stdout, result.stderr

    def rows(self) -> list[tuple[str, str, str, int]]:
        with sqlite3.connect(self.database) as conn:
            return list(
                conn.execute("SELECT username, role, password, session_version FROM accounts")
            )


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[CLI]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield CLI(tmp_path)
    root.handlers[:] = handlers
    root.setLevel(level)


def test_create_reads_the_password_from_stdin_and_stores_only_its_hash(cli: CLI) -> None:
    out, _ = cli("create", "--username", "root", "--password-stdin", stdin=PASSWORD + "\n")
    assert out == "created admin account 'root'\n"
    [(name, role, stored, version)] = cli.rows()
    assert (name, role, version) == ("root", "admin", 1)
    assert PASSWORD not in stored and verify_password(PASSWORD, stored)
    out, _ = cli("list")
    assert out == "root\tadmin\n"


def test_create_refuses_a_taken_name_and_a_short_password(cli: CLI) -> None:
    cli("create", "--username", "root", "--password-stdin", stdin=PASSWORD)
    _, err = cli("create", "--username", "root", "--password-stdin", stdin=PASSWORD, code=1)
    assert err == "cinfer admin create: a console account named 'root' already exists\n"
    _, err = cli("create", "--username", "v", "--password-stdin", stdin="short", code=1)
    assert "8 to 1024 characters" in err
    assert len(cli.rows()) == 1


def test_without_a_terminal_the_password_must_come_from_stdin(cli: CLI) -> None:
    _, err = cli("create", "--username", "root", code=2)
    assert "--password-stdin" in err
    assert not cli.database.exists() or cli.rows() == []


def test_reset_password_ends_the_sessions_and_names_an_unknown_account(cli: CLI) -> None:
    cli("create", "--username", "root", "--password-stdin", stdin=PASSWORD)
    out, _ = cli("reset-password", "--username", "root", "--password-stdin", stdin="new password")
    assert out == "password of 'root' reset; its sessions ended\n"
    [(_, _, stored, version)] = cli.rows()
    assert verify_password("new password", stored) and version == 2
    _, err = cli("reset-password", "--username", "ghost", "--password-stdin", stdin="x" * 9, code=1)
    assert err == "cinfer admin reset-password: no console account 'ghost'\n"


def test_delete_keeps_the_last_admin(cli: CLI) -> None:
    cli("create", "--username", "root", "--password-stdin", stdin=PASSWORD)
    cli("create", "--username", "eve", "--role", "viewer", "--password-stdin", stdin=PASSWORD)
    _, err = cli("delete", "--username", "root", code=1)
    assert "last admin" in err
    cli("delete", "--username", "eve")
    assert [row[0] for row in cli.rows()] == ["root"]
