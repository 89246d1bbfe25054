"""`cinfer tokens`, run in-process over a real SQLite file (test_auth_live.py runs it for real)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from server.auth.tokens import split
from server.cli import build_parser, is_loopback, manage_tokens
from server.settings import load


class CLI:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.config = tmp_path / "config.toml"
        self.config.write_text('[auth]\ndatabase = "state/tokens.db"\n')
        self.capsys = capsys

    def __call__(self, *argv: str, code: int = 0) -> tuple[str, str]:
        args = build_parser().parse_args(["tokens", *argv, "--config", str(self.config)])
        settings = load(args.config, env={})
        assert manage_tokens(args, settings) == code
        captured = self.capsys.readouterr()
        return captured.out, captured.err

    def json(self, *argv: str) -> dict:
        out, _ = self(*argv, "--json")
        return orjson.loads(out)


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> CLI:
    return CLI(tmp_path, capsys)


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
