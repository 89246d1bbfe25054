"""A token's console page: its limits changed by an admin hold on the API at once (the same
TokenPatch path as PATCH /admin/tokens), refused for viewers, forged forms and bad fields
with nothing changed, audited; and the requests-per-day charts count the requests made.

In process like test_manage.py, and the main story once more against a real server process
on a free port."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.auth.accounts import Accounts
from server.auth.store import Database
from server.console import daily
from tests import onnx_models
from tests.console import PASSWORD, TOML, console_app, csrf, set_up
from tests.console.test_manage import viewer_client
from tests.live import live_server

pytestmark = pytest.mark.anyio

INFER = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16],
                     "data": [0.5] * 16}]}  # fmt: skip
WRONG = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 3],
                     "data": [1, 2, 3]}]}  # fmt: skip
CHART = re.compile(r'<script type="application/json" id="daily-data">(.*?)</script>', re.S)
UNCHANGED = {"scope_infer": "1", "models": "", "ips": "", "rate_limit": "0",
             "monthly_quota": "0", "expires": "never", "remark": ""}  # fmt: skip
"""The edit form of a token made by `make_token`, as its page shows it."""


async def make_token(client: httpx.AsyncClient, name: str) -> tuple[str, dict[str, str]]:
    """A token with the infer permission, made on the tokens page: (its id, bearer header)."""
    page = await client.get("/console/tokens")
    made = await client.post(
        "/console/tokens", data={"csrf": csrf(page), "name": name, "scope_infer": "1"}
    )
    assert made.status_code == 201, made.text[-800:]
    secret = re.search(r'<code id="new-token">(cinfer_[^<]+)</code>', made.text)
    assert secret, made.text
    token_id = secret.group(1).split("_")[1]
    return token_id, {"Authorization": f"Bearer {secret.group(1)}"}


def chart(page: httpx.Response) -> dict[str, Any]:
    found = CHART.search(page.text)
    assert found, f"no chart data in the page:\n{page.text[-2000:]}"
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def on(data: dict[str, Any], label: str, day: str) -> int:
    """The count of series `label` on `day` in a page's chart data."""
    series = {s["label"]: s["values"] for s in data["series"]}
    count: int = dict(zip(data["days"], series[label], strict=True))[day]
    return count


async def stored(settings: Any, ref: str) -> dict[str, Any]:
    """The token as the database holds it (another connection, like the CLI)."""
    async with Database(settings.auth.database) as database:
        token = await database.find(ref)
    shown = token.public()
    for moving in ("used_this_month", "last_used_at", "expired"):
        shown.pop(moving)
    return shown


async def updates(settings: Any) -> list[tuple[str, str, str]]:
    async with Database(settings.auth.database) as database:
        log = await Accounts(database).audit_log()
    return [(e.actor, e.target, e.detail) for e in log if e.action == "token.update"]


async def test_limits_changed_on_the_page_hold_on_the_api_at_once(tmp_path: Path) -> None:
    async with console_app(tmp_path, tokens=True) as (client, settings):
        await set_up(client)
        ref, bearer = await make_token(client, "app")
        listing = await client.get("/console/tokens")
        assert f'<a class="token" href="/console/tokens/{ref}"><strong>app</strong></a>' in (
            listing.text
        )
        api = httpx.AsyncClient(transport=client._transport, base_url="http://test")
        async with api:

            async def infer() -> httpx.Response:
                return await api.post("/v2/models/m/infer", json=INFER, headers=bearer)

            assert (await infer()).status_code == 200
            page = await client.get(f"/console/tokens/{ref}")
            assert page.status_code == 200 and "<h1>app</h1>" in page.text
            assert "cinfer_" not in page.text  # never the secret
            for field in UNCHANGED:
                if field != "scope_infer":
                    assert f'<label for="{field}">' in page.text, field
            form = {"csrf": csrf(page), **UNCHANGED}

            done = await client.post(f"/console/tokens/{ref}", data={**form, "rate_limit": "1"})
            assert done.status_code == 303
            assert done.headers["location"] == f"/console/tokens/{ref}?done=updated"
            shown = await client.get(done.headers["location"])
            assert "Saved:" in shown.text and 'name="rate_limit" inputmode="numeric" value="1"' in (
                shown.text
            )
            # A bucket of one request a minute: this one, then 429 until it refills.
            assert (await infer()).status_code == 200
            refused = await infer()
            assert refused.status_code == 429 and "rate limit of 1" in refused.text

            done = await client.post(f"/console/tokens/{ref}", data={**form, "models": "other*"})
            assert done.status_code == 303
            refused = await infer()
            assert refused.status_code == 403 and "may not use model 'm'" in refused.text

            # Two requests served this month: a quota of 2 is spent.
            done = await client.post(f"/console/tokens/{ref}", data={**form, "monthly_quota": "2"})
            assert done.status_code == 303
            refused = await infer()
            assert refused.status_code == 429 and "monthly quota of 2" in refused.text

            done = await client.post(f"/console/tokens/{ref}", data=form)  # all as first made
            assert done.status_code == 303 and (await infer()).status_code == 200
            same = await client.post(f"/console/tokens/{ref}", data=form)
            assert same.headers["location"] == f"/console/tokens/{ref}?done=unchanged"
        target = f"token app ({ref})"
        assert await updates(settings) == [
            ("root", target, "monthly_quota"),  # back to none
            ("root", target, "models, monthly_quota"),
            ("root", target, "models, rate_limit"),
            ("root", target, "rate_limit"),
        ]  # newest first; the unchanged form wrote nothing
        assert "<code>token.update</code>" in (await client.get("/console/audit")).text


async def test_every_field_of_the_form_reaches_the_token(tmp_path: Path) -> None:
    async with console_app(tmp_path, tokens=True) as (client, settings):
        await set_up(client)
        ref, _ = await make_token(client, "app")
        token = csrf(await client.get(f"/console/tokens/{ref}"))
        form = {"csrf": token, "scope_read": "1", "scope_admin": "1", "models": "m, res*, m",
                "ips": "10.0.0.0/8, 192.168.1.7", "rate_limit": "600", "monthly_quota": "5000",
                "expires": "2999-01-31", "remark": "the nightly job"}  # fmt: skip
        assert (await client.post(f"/console/tokens/{ref}", data=form)).status_code == 303
        now = await stored(settings, ref)
        assert (now["scopes"], now["models"], now["ips"]) == (
            ["read", "admin"], ["m", "res*"], ["10.0.0.0/8", "192.168.1.7"]
        )  # fmt: skip
        assert (now["rate_limit"], now["monthly_quota"]) == (600, 5000)
        assert (now["expires_at"], now["remark"]) == ("2999-02-01T00:00:00Z", "the nightly job")
        page = await client.get(f"/console/tokens/{ref}")
        assert 'value="2999-02-01T00:00:00Z"' in page.text  # sent back as shown: kept
        again = {**form, "expires": "2999-02-01T00:00:00Z", "models": "m, res*"}
        same = await client.post(f"/console/tokens/{ref}", data=again)
        assert same.headers["location"].endswith("?done=unchanged")
        never = await client.post(f"/console/tokens/{ref}", data={**again, "expires": ""})
        assert never.status_code == 303
        assert (await stored(settings, ref))["expires_at"] is None
        assert [detail for *_, detail in await updates(settings)] == [
            "expires",
            "expires, ips, models, monthly_quota, permissions, rate_limit, remark",
        ]


async def test_viewers_and_forged_forms_change_nothing(tmp_path: Path) -> None:
    async with console_app(tmp_path, tokens=True) as (client, settings):
        await set_up(client)
        ref, _ = await make_token(client, "app")
        before = await stored(settings, ref)
        change = {**UNCHANGED, "rate_limit": "5"}
        async with viewer_client(client, settings) as viewer:
            page = await viewer.get(f"/console/tokens/{ref}")
            assert page.status_code == 200 and "<h1>app</h1>" in page.text
            assert "Save changes" not in page.text and 'name="rate_limit"' not in page.text
            refused = await viewer.post(
                f"/console/tokens/{ref}", data={"csrf": csrf(page), **change}
            )
            assert refused.status_code == 403 and "viewer" in refused.text
        missing = await client.post(f"/console/tokens/{ref}", data=change)
        assert missing.status_code == 403 and "CSRF" in missing.text
        wrong = await client.post(f"/console/tokens/{ref}", data={"csrf": "x" * 43, **change})
        assert wrong.status_code == 403 and "CSRF" in wrong.text
        assert await stored(settings, ref) == before
        assert await updates(settings) == []
        token = csrf(await client.get("/console/tokens"))
        unknown = await client.post("/console/tokens/nope", data={"csrf": token, **change})
        assert unknown.status_code == 404 and "no token with id or name" in unknown.text
        assert (await client.get("/console/tokens/nope")).status_code == 404


async def test_a_bad_field_is_named_and_nothing_changes(tmp_path: Path) -> None:
    async with console_app(tmp_path, tokens=True) as (client, settings):
        await set_up(client)
        ref, _ = await make_token(client, "app")
        before = await stored(settings, ref)
        token = csrf(await client.get(f"/console/tokens/{ref}"))
        no_permission = {k: v for k, v in UNCHANGED.items() if k != "scope_infer"}
        cases = [
            ({"rate_limit": "ten"}, "rate limit: 'ten' is not a whole number"),
            ({"rate_limit": "1.5"}, "rate limit: '1.5' is not a whole number"),
            ({"monthly_quota": "-1"}, "monthly_quota: Input should be greater than or equal"),
            ({"ips": "10.0.0.300"}, "ips: '10.0.0.300' is not an IPv4 or IPv6 address"),
            ({"ips": "10.0.0.1/8"}, "ips: '10.0.0.1/8' has host bits set"),
            ({"models": "a b"}, "models: model pattern 'a b'"),
            ({"expires": "yesterday"}, "expires 'yesterday' is not a date"),
            ({"expires": "2020-01-31"}, "expires '2020-01-31' (2020-02-01T00:00:00Z) is in the past"),
            ({"remark": "a\x07b", "rate_limit": "3"}, "remark: remark contains control characters"),
        ]  # fmt: skip
        for change, reason in cases:
            form = {"csrf": token, **UNCHANGED, "rate_limit": "7", **change}
            answer = await client.post(f"/console/tokens/{ref}", data=form)
            assert answer.status_code == 400, (change, answer.text[-800:])
            text = html.unescape(answer.text)
            assert reason in text, (change, re.findall(r'role="alert">(.*?)</p>', text))
            typed = next(iter(change.values()))
            assert f'value="{html.escape(typed)}"' in answer.text, change  # kept to fix
        answer = await client.post(f"/console/tokens/{ref}", data={"csrf": token, **no_permission})
        assert answer.status_code == 400 and "at least one permission" in answer.text
        assert await stored(settings, ref) == before
        assert await updates(settings) == []


async def test_a_revoked_token_shows_no_form_and_takes_no_change(tmp_path: Path) -> None:
    async with console_app(tmp_path, tokens=True) as (client, settings):
        await set_up(client)
        ref, _ = await make_token(client, "app")
        token = csrf(await client.get("/console/tokens"))
        await client.post(f"/console/tokens/{ref}/revoke", data={"csrf": token})
        page = await client.get(f"/console/tokens/{ref}")
        assert "cannot be changed" in page.text and "Save changes" not in page.text
        refused = await client.post(
            f"/console/tokens/{ref}", data={"csrf": token, **UNCHANGED, "rate_limit": "5"}
        )
        assert refused.status_code == 409 and "revocation is permanent" in refused.text
        assert (await stored(settings, ref))["rate_limit"] == 0


async def test_the_charts_count_each_tokens_requests_per_day(tmp_path: Path) -> None:
    async with console_app(tmp_path, tokens=True) as (client, _):
        await set_up(client)
        app, app_bearer = await make_token(client, "app")
        ops, ops_bearer = await make_token(client, "ops")
        listing = await client.get("/console/tokens")
        assert "No request with a token in the last 30 days." in listing.text
        assert not CHART.search(listing.text)
        page = await client.get(f"/console/tokens/{app}")
        assert "No request with this token in the last 30 days." in page.text
        api = httpx.AsyncClient(transport=client._transport, base_url="http://test")
        async with api:
            for body in [INFER, INFER, INFER, WRONG]:
                await api.post("/v2/models/m/infer", json=body, headers=app_bearer)
            assert (
                await api.post("/v2/models/m/infer", json=INFER, headers=ops_bearer)
            ).status_code == 200
        day = today()
        data = chart(await client.get("/console/tokens"))  # flushed first: counted at once
        assert len(data["days"]) == 30 and data["days"][-1] == day
        assert [s["label"] for s in data["series"]] == ["app", "ops"]  # busiest first
        assert (on(data, "app", day), on(data, "ops", day), data["total"]) == (4, 1, 5)
        assert sum(data["series"][0]["values"]) == 4  # the other 29 days are 0, not missing
        one = chart(await client.get(f"/console/tokens/{app}"))
        assert (on(one, "requests", day), on(one, "errors", day)) == (4, 1)
        assert on(chart(await client.get(f"/console/tokens/{ops}")), "errors", day) == 0
        assert "Over 30 days: app 4, ops 1." in (await client.get("/console/tokens")).text


def test_the_busiest_eight_tokens_are_drawn_and_the_rest_summed() -> None:
    days, _, _ = daily.window(datetime(2026, 11, 30, 23, 59, tzinfo=UTC).timestamp())
    assert (days[0], days[-1], len(days)) == ("2026-11-01", "2026-11-30", 30)
    rows = [{"day": days[n % 2 - 2], "token_id": f"{n:012x}", "token_name": f"t{n}",
             "model": "m", "requests": n, "errors": 0} for n in range(1, 12)]  # fmt: skip
    rows.append({"day": days[-1], "token_id": "0123456789ab", "token_name": None,
                 "model": "m", "requests": 1, "errors": 0})  # fmt: skip
    drawn = daily.per_token(rows, days)
    labels = [s["label"] for s in drawn["series"]]
    assert labels == ["t11", "t10", "t9", "t8", "t7", "t6", "t5", "t4", "other"]
    other = drawn["series"][-1]
    # t2 the day before; t1, t3 and the deleted token's rows (they outlive it) the last day
    assert other["values"][-2:] == [2, 1 + 3 + 1]
    assert drawn["total"] == sum(range(1, 12)) + 1 and len(other["values"]) == 30


async def test_without_api_tokens_the_pages_still_work_on_the_database(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        ref, _ = await make_token(client, "app")
        page = await client.get(f"/console/tokens/{ref}")
        assert page.status_code == 200 and "are not enforced on this server" in page.text
        done = await client.post(
            f"/console/tokens/{ref}", data={"csrf": csrf(page), **UNCHANGED, "rate_limit": "9"}
        )
        assert done.status_code == 303
        assert 'value="9"' in (await client.get(done.headers["location"])).text
        assert "No request with a token" in (await client.get("/console/tokens")).text


def test_the_story_against_a_real_server(tmp_path: Path) -> None:
    """Over HTTP to `python -m server` on a free port: a quota set on the page refuses the
    next real infer request, and the chart counts the requests that were served."""
    models = tmp_path / "models"
    onnx_models.dense_folder(models, "m", TOML)
    env = {
        "CINFER_AUTH__ENABLED": "true",
        "CINFER_AUTH__DATABASE": str(tmp_path / "db" / "cinfer.db"),
        "CINFER_CONSOLE__ENABLED": "true",
    }
    with live_server(models, env=env) as (url, _), httpx.Client(base_url=url) as console:
        page = console.get("/console/setup")
        form = {"username": "root", "password": PASSWORD, "confirm": PASSWORD,
                "csrf": csrf(page)}  # fmt: skip
        assert console.post("/console/setup", data=form).status_code == 303
        page = console.get("/console/tokens")
        made = console.post("/console/tokens",
                            data={"csrf": csrf(page), "name": "app", "scope_infer": "1"})  # fmt: skip
        secret = re.search(r'<code id="new-token">(cinfer_[^<]+)</code>', made.text)
        assert made.status_code == 201 and secret, made.text[-800:]
        ref, bearer = secret.group(1).split("_")[1], {"Authorization": f"Bearer {secret.group(1)}"}
        infer = f"{url}/v2/models/m/infer"
        for _ in range(3):
            assert httpx.post(infer, json=INFER, headers=bearer).status_code == 200
        page = console.get(f"/console/tokens/{ref}")
        assert on(chart(page), "requests", today()) == 3
        done = console.post(f"/console/tokens/{ref}",
                            data={"csrf": csrf(page), **UNCHANGED, "monthly_quota": "3"})  # fmt: skip
        assert done.status_code == 303
        refused = httpx.post(infer, json=INFER, headers=bearer)
        assert refused.status_code == 429 and "monthly quota of 3" in refused.text
        # The refusal is a request too, and an error, on the day it was made.
        assert on(chart(console.get("/console/tokens")), "app", today()) == 4
        assert on(chart(console.get(f"/console/tokens/{ref}")), "errors", today()) == 1
