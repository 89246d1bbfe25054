"""The console's pages and actions in process: first run, sign-in, CSRF, throttling, sessions,
the dashboard, static files, the path prefix (server/console/)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx
import pytest

from server.auth.accounts import Accounts
from server.auth.store import Database
from server.console.sessions import COOKIE, FREE
from server.console.web import SECURITY_HEADERS
from tests.console import PASSWORD, console_app, csrf, set_up, sign_in

pytestmark = pytest.mark.anyio


def accounts_in(root: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(root / "data" / "cinfer.db") as conn:
        return list(conn.execute("SELECT username, role FROM accounts ORDER BY username"))


def audit_in(root: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(root / "data" / "cinfer.db") as conn:
        return list(conn.execute("SELECT actor, action, target FROM audit_log ORDER BY id"))


async def test_first_run_offers_set_up_with_labelled_fields(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        response = await client.get("/console")
        assert response.status_code == 303
        assert response.headers["location"] == "/console/setup"
        assert (await client.get("/console/login")).headers["location"] == "/console/setup"
        page = await client.get("/console/setup")
        assert page.status_code == 200
        for field, label in [("username", "Username"), ("password", "Password"),
                             ("confirm", "Confirm password")]:  # fmt: skip
            assert f'<label for="{field}">{label}</label>' in page.text
            assert f'id="{field}"' in page.text
        assert '<button type="submit" class="primary">Create admin account</button>' in page.text
        for header, value in SECURITY_HEADERS.items():
            assert page.headers[header] == value


async def test_set_up_creates_the_admin_signs_in_and_then_closes(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        response = await set_up(client)
        assert response.status_code == 303 and response.headers["location"] == "/console"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
        assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
        dashboard = await client.get("/console")
        assert dashboard.status_code == 200
        assert "Dashboard" in dashboard.text and "root" in dashboard.text
        assert accounts_in(tmp_path) == [("root", "admin")]
        # Set-up is closed now: the page sends to sign-in, a (valid) form is refused.
        anonymous = httpx.AsyncClient(transport=client._transport, base_url="http://test")
        async with anonymous:
            assert (await anonymous.get("/console/setup")).headers["location"] == "/console/login"
            token = csrf(await anonymous.get("/console/login"))  # a valid form token
            again = await anonymous.post(
                "/console/setup",
                data={"username": "intruder", "password": PASSWORD, "confirm": PASSWORD,
                      "csrf": token},
            )  # fmt: skip
            assert again.status_code == 409 and "exists already" in again.text
        assert accounts_in(tmp_path) == [("root", "admin")]
    assert ("root", "account.create", "root") in audit_in(tmp_path)


async def test_set_up_refuses_mismatched_passwords_bad_names_and_forms_without_csrf(
    tmp_path: Path,
) -> None:
    async with console_app(tmp_path) as (client, _):
        page = await client.get("/console/setup")
        token = csrf(page)
        fields = {"username": "root", "password": PASSWORD, "confirm": PASSWORD + "x"}
        response = await client.post("/console/setup", data={**fields, "csrf": token})
        assert response.status_code == 400 and "The two passwords differ." in response.text
        fields = {
            "username": "\u0430dmin",
            "password": PASSWORD,
            "confirm": PASSWORD,
        }  # a Cyrillic a
        response = await client.post("/console/setup", data={**fields, "csrf": token})
        assert response.status_code == 400 and "ASCII" in response.text
        fields = {"username": "root", "password": "short", "confirm": "short"}
        response = await client.post("/console/setup", data={**fields, "csrf": token})
        assert response.status_code == 400 and "8 to 1024 characters" in response.text
        fields = {"username": "root", "password": PASSWORD, "confirm": PASSWORD}
        for forged in [{}, {"csrf": "forged"}]:
            response = await client.post("/console/setup", data={**fields, **forged})
            assert response.status_code == 403
            assert "did not come from this server" in response.text
        assert accounts_in(tmp_path) == []


async def test_two_racing_set_ups_create_exactly_one_admin(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        transport = client._transport
        clients = [httpx.AsyncClient(transport=transport, base_url="http://test") for _ in range(4)]
        pages = [await c.get("/console/setup") for c in clients]
        answers = await asyncio.gather(*(
            c.post("/console/setup", data={"username": f"admin{i}", "password": PASSWORD,
                                           "confirm": PASSWORD, "csrf": csrf(p)})
            for i, (c, p) in enumerate(zip(clients, pages, strict=True))
        ))  # fmt: skip
        for c in clients:
            await c.aclose()
        assert sorted(a.status_code for a in answers) == [303, 409, 409, 409]
        assert len(accounts_in(tmp_path)) == 1


async def test_sign_in_says_the_same_for_an_unknown_user_and_a_wrong_password(
    tmp_path: Path,
) -> None:
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        transport = client._transport
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as other:
            wrong = await sign_in(other, "root", "not the password")
            unknown = await sign_in(other, "nobody", PASSWORD)
            assert wrong.status_code == unknown.status_code == 401
            assert "Wrong username or password." in wrong.text
            assert wrong.text.replace("root", "nobody") == unknown.text.replace(
                csrf(unknown), csrf(wrong)
            )
            assert COOKIE not in wrong.headers.get("set-cookie", "")
            right = await sign_in(other, "root")
            assert right.status_code == 303
            assert (await other.get("/console")).status_code == 200


async def test_failed_sign_ins_are_throttled_per_account_and_per_address(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        transport = client._transport
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as other:
            for _ in range(FREE):
                assert (await sign_in(other, "root", "wrong password")).status_code == 401
            # Now even the right password waits: the account is held, whoever asks.
            held = await sign_in(other, "root")
            assert held.status_code == 429
            assert "Too many failed sign-ins. Try again in" in held.text
            assert int(held.headers["retry-after"]) >= 1
            # The address is held too, for every account name it tries.
            assert (await sign_in(other, "someone-else", "wrong")).status_code == 429


async def test_logout_needs_the_csrf_token_and_ends_every_session_of_the_account(
    tmp_path: Path,
) -> None:
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        transport = client._transport
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as second:
            assert (await sign_in(second, "root")).status_code == 303
            assert (await second.get("/console")).status_code == 200
            refused = await client.post("/console/logout", data={})
            assert refused.status_code == 403 and "CSRF" in refused.text
            assert (await client.get("/console")).status_code == 200  # still signed in
            page = await client.get("/console")
            out = await client.post("/console/logout", data={"csrf": csrf(page)})
            assert out.status_code == 303 and out.headers["location"] == "/console/login"
            assert f'{COOKIE}=""' in out.headers["set-cookie"]
            assert (await client.get("/console")).headers["location"] == "/console/login"
            # The other session of the account ended with it.
            assert (await second.get("/console")).headers["location"] == "/console/login"
    assert ("root", "session.end", "root") in audit_in(tmp_path)


async def test_a_password_or_role_change_ends_the_accounts_sessions(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, settings):
        await set_up(client)
        assert (await client.get("/console")).status_code == 200
        async with Database(settings.auth.database) as database:  # what `cinfer admin` does
            await Accounts(database).set_password("root", "a new password")
        assert (await client.get("/console")).headers["location"] == "/console/login"


async def test_a_forged_or_foreign_cookie_opens_nothing(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        value = client.cookies[COOKIE]
        client.cookies.clear()
        signature = value.rindex(".") + 1  # its first character: never only padding bits
        flipped = "B" if value[signature] == "A" else "A"
        client.cookies.set(COOKIE, value[:signature] + flipped + value[signature + 1 :])
        assert (await client.get("/console")).headers["location"] == "/console/login"
    # Another server's key (a new database): the same cookie is refused.
    async with console_app(tmp_path / "other") as (client, _):
        await set_up(client)
        client.cookies.clear()
        client.cookies.set(COOKIE, value)
        assert (await client.get("/console")).headers["location"] == "/console/login"


async def test_an_api_token_never_opens_the_console_nor_a_session_the_api(tmp_path: Path) -> None:
    async with console_app(tmp_path, tokens=True) as (client, settings):
        await set_up(client)
        assert (await client.get("/console")).status_code == 200
        # The session cookie is not an API token.
        assert (await client.get("/v2/models/m")).status_code == 401
        async with Database(settings.auth.database) as database:
            from server.auth.tokens import TokenSpec

            _, secret = await database.create(TokenSpec(name="ops", scopes=["admin", "read"]))
        client.cookies.clear()
        page = await client.get("/console", headers={"Authorization": f"Bearer {secret}"})
        assert page.status_code == 303 and page.headers["location"] == "/console/login"


async def test_the_dashboard_shows_the_server_and_its_models(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, settings):
        await set_up(client)
        page = await client.get("/console")
        text = page.text
        assert "onnxruntime" in text  # engines installed, with their versions
        assert "CPU:" in text
        assert str(settings.repository.mode) in text or "startup mode" in text
        assert '<li class="state state-ready">1 READY</li>' in text
        assert 'data-stream="/console/live"' in text


async def test_static_files_are_served_with_cache_headers(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        for name in ["htmx.min.js", "uplot.min.js", "uplot.min.css", "console.css", "console.js"]:
            response = await client.get(f"/console/static/{name}")
            assert response.status_code == 200, name
            assert response.headers["cache-control"] == "public, max-age=86400"
            again = await client.get(
                f"/console/static/{name}", headers={"If-None-Match": response.headers["etag"]}
            )
            assert again.status_code == 304
        for bad in ["nope.js", ".hidden", "..%2Fpages.py"]:
            assert (await client.get(f"/console/static/{bad}")).status_code == 404


async def test_the_live_stream_needs_a_session(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        response = await client.get("/console/live")
        assert response.status_code == 401


async def test_links_and_cookies_keep_to_the_path_prefix(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        app = client._transport.app  # type: ignore[attr-defined]
        prefixed = httpx.ASGITransport(app=app, root_path="/cinfer")
        async with httpx.AsyncClient(transport=prefixed, base_url="http://test") as behind:
            response = await behind.get("/cinfer/console")
            assert response.headers["location"] == "/cinfer/console/setup"
            page = await behind.get("/cinfer/console/setup")
            assert 'action="/cinfer/console/setup"' in page.text
            assert 'href="/cinfer/console/static/console.css"' in page.text
            created = await behind.post(
                "/cinfer/console/setup",
                data={"username": "root", "password": PASSWORD, "confirm": PASSWORD,
                      "csrf": csrf(page)},
            )  # fmt: skip
            assert created.headers["location"] == "/cinfer/console"
            assert "Path=/cinfer/console" in created.headers["set-cookie"]


async def test_https_behind_a_trusted_proxy_makes_the_cookie_secure(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        page = await client.get("/console/setup")
        response = await client.post(
            "/console/setup",
            data={"username": "root", "password": PASSWORD, "confirm": PASSWORD,
                  "csrf": csrf(page)},
            headers={"X-Forwarded-Proto": "https"},  # from an untrusted peer: ignored
        )  # fmt: skip
        assert "Secure" not in response.headers["set-cookie"]
    async with console_app(tmp_path / "proxied", proxies=("127.0.0.1",)) as (client, _):
        page = await client.get("/console/setup")
        response = await client.post(
            "/console/setup",
            data={"username": "root", "password": PASSWORD, "confirm": PASSWORD,
                  "csrf": csrf(page)},
            headers={"X-Forwarded-Proto": "https"},  # from the trusted proxy: believed
        )  # fmt: skip
        assert "; Secure" in response.headers["set-cookie"]
