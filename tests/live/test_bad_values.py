"""Values out of range, against a real server and the real CLI (issue 12, finding 4).

An expiry beyond what a date holds used to be stored and then answer 500 on every listing;
a day before year 1 and a model name longer than a folder name answered 500. Each is a 400
(or 404) naming the field now, nothing is stored, and a row that an older version (or a
hand in SQLite) left out of range still lists, shows, revokes and deletes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import orjson

from tests.live import live_server, server_log
from tests.live.test_auth import cli, create, env, infer, repo

__all__ = ["env", "repo"]  # fixtures

TOO_LATE = [
    "999999w",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31",
]
TOO_EARLY = ["0001-01-01T00:00:00+14:00", "0001-01-01"]
#: What an older version stored for "999999w": the year 21192.
YEAR_21192 = 606_595_677_039.0


def names(url: str, admin: dict[str, str]) -> list[str]:
    response = httpx.get(f"{url}/admin/tokens", headers=admin)
    assert response.status_code == 200, response.text
    return [token["name"] for token in response.json()["tokens"]]


def test_out_of_range_values_are_400s_and_nothing_is_stored(
    repo: Path, env: dict[str, str]
) -> None:
    admin = {
        "Authorization": f"Bearer {create(env, '--name', 'admin', '--scope', 'admin,read,infer')}"
    }
    create(env, "--name", "kept", "--expires", "30d")
    with live_server(repo, env=env) as (url, _):
        kept = httpx.get(f"{url}/admin/tokens/kept", headers=admin).json()
        for expires in TOO_LATE + TOO_EARLY:
            body = {"name": "late", "expires": expires}
            response = httpx.post(f"{url}/admin/tokens", json=body, headers=admin)
            assert response.status_code == 400, (expires, response.text)
            message = response.json()["error"]
            assert message.startswith(f"expires {expires!r}"), message
            expected = "is in the past" if expires in TOO_EARLY else "is beyond 9999-12-31"
            assert expected in message, message
            for path, change in [
                ("/admin/tokens/kept", httpx.patch),
                ("/admin/tokens/kept/extend", httpx.post),
            ]:
                response = change(f"{url}{path}", json={"expires": expires}, headers=admin)
                assert response.status_code == 400 and "expires" in response.json()["error"]
            refused = cli(env, "create", "--name", "late", "--expires", expires, check=False)
            assert refused.returncode == 1 and f"expires {expires!r}" in refused.stderr
            assert "Traceback" not in refused.stderr
        # Nothing stored, nothing changed, and everything still lists.
        assert names(url, admin) == ["admin", "kept"]
        assert httpx.get(f"{url}/admin/tokens/kept", headers=admin).json() == kept
        assert cli(env, "list").returncode == 0
        # The latest instant a date holds is accepted.
        body = {"name": "latest", "expires": "9999-12-31T23:59:59Z"}
        response = httpx.post(f"{url}/admin/tokens", json=body, headers=admin)
        assert response.status_code == 201 and response.json()["expires_at"] == body["expires"]

        for query in ["since=0000-01-01", "until=0000-01-01", "since=10000-01-01"]:
            response = httpx.get(f"{url}/admin/usage?{query}", headers=admin)
            assert response.status_code == 400, (query, response.text)
            assert response.json()["error"].startswith(query.split("=")[0] + "=")
        response = httpx.get(f"{url}/admin/usage?since=0001-01-01&until=9999-12-31", headers=admin)
        assert response.status_code == 200 and response.json()["usage"]

        # A model name longer than any folder name: 404 (no such model), not OSError 36.
        for name in ["a" * 256, "a" * 4000, "tiny%0A"]:
            for action in ("load", "unload"):
                response = httpx.post(f"{url}/v2/repository/models/{name}/{action}", headers=admin)
                assert response.status_code == 404, (name[:8], action, response.text)
    assert "Traceback" not in server_log(repo)


def test_a_row_an_older_version_wrote_still_lists_shows_and_deletes(
    repo: Path, env: dict[str, str]
) -> None:
    database = Path(env["CINFER_AUTH__DATABASE"])
    admin = {
        "Authorization": f"Bearer {create(env, '--name', 'admin', '--scope', 'admin,read,infer')}"
    }
    old = create(env, "--name", "old", "--expires", "30d")
    broken = create(env, "--name", "broken")
    ancient = create(env, "--name", "ancient")
    soon = create(env, "--name", "soon")
    # As stored before issue 12 (an expiry of "999999w"), and as a hand might leave a row.
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE tokens SET expires_at = ? WHERE name = 'old'", (YEAR_21192,))
        conn.execute("UPDATE tokens SET ips = 'not json', rate_limit = 'ten' WHERE name = 'broken'")
        conn.execute("UPDATE tokens SET expires_at = -1e300 WHERE name = 'ancient'")
        conn.execute("UPDATE tokens SET expires_at = 'soon' WHERE name = 'soon'")

    listing = cli(env, "list")
    assert "old" in listing.stdout and "broken" in listing.stdout
    assert "expires_at 606595677039.0 is not a date" in listing.stderr
    assert "cannot use ips 'not json', rate_limit 'ten'" in listing.stderr
    shown = {t["name"]: t for t in orjson.loads(cli(env, "list", "--json").stdout)}
    assert shown["old"]["expires_at"] is None and shown["old"]["expired"] is False
    assert shown["old"]["scopes"] == ["infer"]
    # What cannot be read grants nothing; an expiry before year 1 has passed.
    assert shown["broken"]["scopes"] == shown["soon"]["scopes"] == []
    assert shown["soon"]["expires_at"] is None and shown["ancient"]["expired"] is True

    with live_server(repo, env=env) as (url, _):
        listed = httpx.get(f"{url}/admin/tokens", headers=admin)
        assert listed.status_code == 200, listed.text
        assert [t["name"] for t in listed.json()["tokens"]] == [
            "admin", "old", "broken", "ancient", "soon"
        ]  # fmt: skip
        # The far expiry still holds; the unreadable rows let nothing through.
        assert infer(url, old).status_code == 200
        assert infer(url, broken).status_code == infer(url, soon).status_code == 403
        assert infer(url, ancient).status_code == 401
        for action in ("pause", "resume", "reset-usage"):
            response = httpx.post(f"{url}/admin/tokens/old/{action}", headers=admin)
            assert response.status_code == 200, (action, response.text)
            assert response.json()["expires_at"] is None
        assert httpx.get(f"{url}/admin/tokens/broken", headers=admin).status_code == 200
        revoked = httpx.post(f"{url}/admin/tokens/broken/revoke", headers=admin)
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        assert httpx.delete(f"{url}/admin/tokens/broken", headers=admin).status_code == 200
        assert infer(url, old).status_code == 200
    assert "is not a date between 0001 and 9999; shown as null" in server_log(repo)
    assert "Traceback" not in server_log(repo)

    for command in (["show", "old"], ["revoke", "old"], ["reset-usage", "old"], ["delete", "old"]):
        assert cli(env, *command).returncode == 0
    remaining = [t["name"] for t in orjson.loads(cli(env, "list", "--json").stdout)]
    assert remaining == ["admin", "ancient", "soon"]


#: Bodies POST /admin/tokens used to take (issue 12, finding 11): each is a 400 naming the field.
LOOSE = [
    ({"name": "\u0430dmin"}, "name: token name '\u0430dmin' must be 1-64 ASCII"),
    ({"name": "\u0663\u0663\u0663\u0663"}, "name: token name"),
    ({"name": "\u216b"}, "name: token name"),
    ({"name": "ok", "models": ["\u0430dmin*"]}, "models: model pattern"),
    ({"name": "ok", "rate_limit": "10"}, 'rate_limit: Input should be a valid integer, not "10"'),
    ({"name": "ok", "rate_limit": True}, "rate_limit: Input should be a valid integer, not true"),
    ({"name": "ok", "monthly_quota": "5"}, "monthly_quota: Input should be a valid integer"),
    ({"name": "ok", "monthly_quota": 5.0}, "monthly_quota: Input should be a valid integer"),
    ({"name": "ok", "scopes": "admin"}, "scopes: Input should be a valid list"),
    ({"name": "ok", "scopes": [True]}, "scopes.0: Input should be 'infer', 'read' or 'admin'"),
    ({"name": "ok", "models": "iris"}, "models: Input should be a valid list"),
    ({"name": "ok", "ips": [167772161]}, "ips.0: Input should be a valid string"),
    ({"name": "ok", "remark": 7}, "remark: Input should be a valid string"),
    ({"name": "ok", "expires": 30}, "expires: Input should be a valid string"),
    ({"name": 5}, "name: Input should be a valid string"),
]


def test_names_are_ascii_and_fields_have_their_json_types(repo: Path, env: dict[str, str]) -> None:
    admin = {
        "Authorization": f"Bearer {create(env, '--name', 'admin', '--scope', 'admin,read,infer')}"
    }
    # The CLI converts its arguments before the strict check.
    create(env, "--name", "limited", "--rate-limit", "10", "--monthly-quota", "100")
    with live_server(repo, env=env) as (url, _):
        before = httpx.get(f"{url}/admin/tokens/limited", headers=admin).json()
        for body, message in LOOSE:
            response = httpx.post(f"{url}/admin/tokens", json=body, headers=admin)
            assert response.status_code == 400, (body, response.text)
            assert message in response.json()["error"], (body, response.text)
            change = {key: value for key, value in body.items() if key != "name" or len(body) == 1}
            response = httpx.patch(f"{url}/admin/tokens/limited", json=change, headers=admin)
            assert response.status_code == 400, (change, response.text)
            assert message.split(":")[0] in response.json()["error"], (change, response.text)
        # Nothing stored, nothing changed.
        assert names(url, admin) == ["admin", "limited"]
        shown = httpx.get(f"{url}/admin/tokens/limited", headers=admin).json()
        assert shown == before and (shown["rate_limit"], shown["monthly_quota"]) == (10, 100)
