"""Nothing derived from a secret reaches a log, even at log_level debug (issue 12, finding 10).

aiosqlite logs each statement it runs with its parameters at DEBUG: a new token's INSERT
held the sha256 of its secret, which at debug level went to the server's log.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import httpx

from tests.live import live_server, server_log
from tests.live.test_auth import cli, create, env, infer, repo, secret

__all__ = ["env", "repo"]  # fixtures


def traces(token: str) -> dict[str, str]:
    """Every form in which a token's secret, or its hash, could be written to a log."""
    digest = hashlib.sha256(secret(token).encode()).digest()
    return {
        "secret": secret(token),
        "hex hash": digest.hex(),
        "repr of the hash": repr(digest),
        "repr of the hash without b''": repr(digest)[2:-1],
        "base64 hash": base64.b64encode(digest).decode(),
        "url-safe base64 hash": base64.urlsafe_b64encode(digest).decode().rstrip("="),
    }


def test_no_secret_nor_its_hash_is_logged_at_debug_level(repo: Path, env: dict[str, str]) -> None:
    debug = {**env, "CINFER_SERVER__LOG_LEVEL": "debug"}
    admin = create(debug, "--name", "admin", "--scope", "admin,infer")
    with live_server(repo, env=debug) as (url, _):
        response = httpx.post(
            f"{url}/admin/tokens",
            json={"name": "made-over-rest"},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert response.status_code == 201, response.text
        over_rest = response.json()["token"]
        by_cli = create(debug, "--name", "made-by-cli")
        created = cli(debug, "create", "--name", "printed")
        for token in (admin, over_rest, by_cli):
            assert infer(url, token).status_code == 200
        cli(debug, "list")
        log = server_log(repo)
        # The debug level is in force: the log holds more than the INFO lines.
        assert " DEBUG " in log
    log = server_log(repo) + created.stderr
    # Named, not shown: a failure here should not print the traces again.
    found = [
        f"{name}: {kind}"
        for name, token in [
            ("admin", admin),
            ("made-over-rest", over_rest),
            ("made-by-cli", by_cli),
            ("printed", created.stdout.strip()),
        ]
        for kind, trace in traces(token).items()
        if trace in log
    ]
    assert found == []
