"""The console's models, tokens and audit pages in process: what each role sees and may do,
CSRF on every change, and changes that reach the API at once."""

from __future__ import annotations

import contextlib
import html
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from server.auth.accounts import Accounts
from server.auth.store import Database
from server.settings import Settings
from tests.console import PASSWORD, console_app, csrf, set_up, sign_in

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def viewer_client(
    client: httpx.AsyncClient, settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    """A client signed in as the viewer eve."""
    async with Database(settings.auth.database) as database:
        await Accounts(database).create("eve", PASSWORD, "viewer")
    async with httpx.AsyncClient(transport=client._transport, base_url="http://test") as viewer:
        assert (await sign_in(viewer, "eve")).status_code == 303
        yield viewer


async def test_the_models_page_lists_versions_and_filters(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        page = await client.get("/console/models")
        assert page.status_code == 200
        row = re.search(r'<a href="/console/models/m">m</a>.*?</tr>', page.text, re.S)
        assert row, page.text
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(0), re.S)
        # After the name's cell: version, state, engine, device, instances, max batch, ...
        assert cells[0] == "1" and "READY" in cells[1]
        assert cells[2:4] == ["onnxruntime", "cpu"]
        assert cells[4:7] == ["1", "8", "0"]  # instances, max batch, requests
        assert "No model matches." in (await client.get("/console/models?name=zzz")).text
        only = await client.get("/console/models?state=UNAVAILABLE")
        assert "No model matches." in only.text


async def test_the_model_page_shows_its_file_schema_and_statistics(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 16],
                            "data": [0.5] * 32}]}  # fmt: skip
        assert (await client.post("/v2/models/m/infer", json=body)).status_code == 200
        page = await client.get("/console/models/m")
        assert page.status_code == 200
        text = page.text
        assert '<span class="toml-key">engine</span>' in text
        assert '<span class="toml-string">&#34;onnxruntime&#34;</span>' in text
        assert "<code>INPUT0</code></td><td>FP32</td>" in text
        assert "<code>OUTPUT0</code></td><td>FP32</td>" in text
        assert "Version 1" in text and "1 succeeded" in text
        assert "<td>2 row(s)</td>" in text  # the batch of two rows it ran
        missing = await client.get("/console/models/nope")
        assert missing.status_code == 404 and "no model &#39;nope&#39;" in missing.text


async def test_reload_needs_an_admin_and_the_csrf_token(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, settings):
        await set_up(client)
        refused = await client.post("/console/models/m/reload", data={"csrf": "wrong"})
        assert refused.status_code == 403 and "CSRF" in refused.text
        token = csrf(await client.get("/console/models/m"))
        done = await client.post("/console/models/m/reload", data={"csrf": token})
        assert done.status_code == 303
        assert done.headers["location"] == "/console/models/m?done=reloaded"
        assert "Reloaded from its folder." in (await client.get(done.headers["location"])).text
        async with viewer_client(client, settings) as viewer:
            page = await viewer.get("/console/models/m")
            assert page.status_code == 200 and ">Reload</button>" not in page.text
            answer = await viewer.post("/console/models/m/reload", data={"csrf": csrf(page)})
            assert answer.status_code == 403 and "viewer" in answer.text
        async with Database(settings.auth.database) as database:
            log = await Accounts(database).audit_log()
        reloads = [(e.actor, e.target) for e in log if e.action == "model.reload"]
        assert reloads == [("root", "m")]  # the viewer's refused one is not there


async def test_tokens_made_paused_and_revoked_in_the_console_hold_on_the_api(
    tmp_path: Path,
) -> None:
    async with console_app(tmp_path, tokens=True) as (client, _):
        await set_up(client)
        page = await client.get("/console/tokens")
        assert page.status_code == 200 and "No token yet." in page.text
        form = {"csrf": csrf(page), "name": "reader", "scope_read": "1", "models": "m",
                "rate_limit": "600", "monthly_quota": "1000"}  # fmt: skip
        made = await client.post("/console/tokens", data=form)
        assert made.status_code == 201
        secret = re.search(r'<code id="new-token">(cinfer_[^<]+)</code>', made.text)
        assert secret, made.text
        bearer = {"Authorization": f"Bearer {secret.group(1)}"}
        api = httpx.AsyncClient(transport=client._transport, base_url="http://test")
        async with api:
            assert (await api.get("/v2/models/m", headers=bearer)).status_code == 200
            listing = await client.get("/console/tokens")
            assert secret.group(1) not in listing.text  # shown once, never again
            token_id = re.search(r'action="/console/tokens/([^/"]+)/pause"', listing.text)
            assert token_id
            ref, token = token_id.group(1), csrf(listing)
            for action, status in [("pause", 401), ("resume", 200), ("revoke", 401)]:
                done = await client.post(f"/console/tokens/{ref}/{action}", data={"csrf": token})
                assert done.status_code == 303, action
                assert (await api.get("/v2/models/m", headers=bearer)).status_code == status
            assert ">revoked</span>" in (await client.get("/console/tokens")).text
            gone = await client.post(f"/console/tokens/{ref}/delete", data={"csrf": token})
            assert gone.status_code == 303
            assert "No token yet." in (await client.get("/console/tokens")).text
        audit = (await client.get("/console/audit")).text
        for action in ["token.create", "token.pause", "token.resume", "token.revoke",
                       "token.delete"]:  # fmt: skip
            assert f"<code>{action}</code>" in audit, action


async def test_a_bad_token_form_is_refused_with_the_reason_and_nothing_made(
    tmp_path: Path,
) -> None:
    async with console_app(tmp_path, tokens=True) as (client, _):
        await set_up(client)
        token = csrf(await client.get("/console/tokens"))
        cases = [
            ({"name": "a", "scope_infer": "1", "rate_limit": "ten"}, 400,
             "rate limit: &#39;ten&#39; is not a whole number"),
            ({"name": "a"}, 400, "at least one permission"),
            ({"name": "a b", "scope_infer": "1"}, 400, "invalid token: name"),
            ({"name": "a", "scope_infer": "1", "ips": "10.0.0.300"}, 400, "ips"),
            ({"name": "a", "scope_infer": "1", "expires": "yesterday"}, 400, "expires"),
        ]  # fmt: skip
        for fields, status, reason in cases:
            answer = await client.post("/console/tokens", data={"csrf": token, **fields})
            assert answer.status_code == status, (fields, answer.text[-800:])
            assert reason in answer.text, (fields, reason)
        assert "No token yet." in (await client.get("/console/tokens")).text
        assert (await client.post(
            "/console/tokens", data={"csrf": token, "name": "a", "scope_infer": "1"}
        )).status_code == 201  # fmt: skip
        taken = await client.post(
            "/console/tokens", data={"csrf": token, "name": "a", "scope_infer": "1"}
        )
        assert taken.status_code == 409 and "already exists" in taken.text
        forged = await client.post("/console/tokens", data={"name": "b", "scope_infer": "1"})
        assert forged.status_code == 403


async def test_a_viewer_sees_tokens_but_changes_nothing(tmp_path: Path) -> None:
    async with console_app(tmp_path, tokens=True) as (client, settings):
        await set_up(client)
        token = csrf(await client.get("/console/tokens"))
        await client.post("/console/tokens", data={"csrf": token, "name": "a", "scope_infer": "1"})
        async with viewer_client(client, settings) as viewer:
            page = await viewer.get("/console/tokens")
            assert page.status_code == 200 and "<strong>a</strong>" in page.text
            assert "Create a token" not in page.text and ">Revoke</button>" not in page.text
            answer = await viewer.post(
                "/console/tokens", data={"csrf": csrf(page), "name": "b", "scope_infer": "1"}
            )
            assert answer.status_code == 403
            assert (await viewer.get("/console/audit")).status_code == 200
        assert "<strong>b</strong>" not in (await client.get("/console/tokens")).text


async def test_the_audit_log_pages_and_refuses_a_bad_cursor(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        page = await client.get("/console/audit")
        assert page.status_code == 200 and "<code>account.create</code>" in page.text
        bad = await client.get("/console/audit?before=x")
        assert bad.status_code == 400 and "not an audit entry id" in bad.text
        anonymous = httpx.AsyncClient(transport=client._transport, base_url="http://test")
        async with anonymous:
            for path in ["/console/audit", "/console/tokens", "/console/models"]:
                answer = await anonymous.get(path)
                assert answer.headers["location"] == "/console/login", path


async def test_try_it_runs_one_counted_inference_and_names_what_was_wrong(
    tmp_path: Path,
) -> None:
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        labels = [f"class-{n}" for n in range(16)]
        (tmp_path / "models" / "m" / "labels.txt").write_text("\n".join(labels) + "\n")
        page = await client.get("/console/models/m/try")
        assert page.status_code == 200
        body = re.search(r'<textarea id="body" name="body"[^>]*>(.*?)</textarea>', page.text, re.S)
        assert body
        example = html.unescape(body.group(1))
        assert json.loads(example)["inputs"][0]["shape"] == [1, 16]
        answer = await client.post(
            "/console/models/m/try", data={"csrf": csrf(page), "body": example}
        )
        assert answer.status_code == 200
        assert re.search(r"answered in <strong>[\d.]+ ms</strong>", answer.text)
        assert "<code>OUTPUT0</code>" in answer.text
        assert "Top classes" in answer.text and "class-" in answer.text
        stats = (await client.get("/v2/models/m/stats")).json()
        assert stats["model_stats"][0]["inference_stats"]["success"]["count"] == 1
        request = json.loads(example)
        request["inputs"][0]["shape"] = [1, 15]
        wrong = json.dumps(request)
        refused = await client.post(
            "/console/models/m/try", data={"csrf": csrf(page), "body": wrong}
        )
        assert refused.status_code == 400 and "input &#39;INPUT0&#39;" in refused.text
        broken = await client.post("/console/models/m/try", data={"csrf": csrf(page), "body": "{"})
        assert broken.status_code == 400
        forged = await client.post("/console/models/m/try", data={"body": example})
        assert forged.status_code == 403
        assert (await client.get("/console/models/nope/try")).status_code == 404


async def test_try_it_snippets_carry_a_placeholder_never_a_secret(tmp_path: Path) -> None:
    async with console_app(tmp_path, tokens=True) as (client, _):
        await set_up(client)
        page = (await client.get("/console/models/m/try")).text
        snippets = [
            html.unescape(s) for s in re.findall(r'<code id="snippet-\d">(.*?)</code>', page, re.S)
        ]
        assert len(snippets) == 3
        assert all("TOKEN" in s for s in snippets)
        assert "cinfer_" not in page
        assert snippets[0].startswith("curl -s -X POST http://test/v2/models/m/infer")


async def test_the_usage_page_filters_pages_and_exports_the_log(tmp_path: Path) -> None:
    async with console_app(tmp_path, tokens=True) as (client, settings):
        await set_up(client)
        async with Database(settings.auth.database) as database:
            from server.auth.tokens import TokenSpec

            _, secret = await database.create(TokenSpec(name="app", scopes=["infer"]))
        body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16],
                            "data": [0.5] * 16}]}  # fmt: skip
        api = httpx.AsyncClient(transport=client._transport, base_url="http://test")
        async with api:
            bearer = {"Authorization": f"Bearer {secret}"}
            await api.post("/v2/models/m/infer", json=body, headers=bearer)  # the guard learns it
            for _ in range(3):
                assert (
                    await api.post("/v2/models/m/infer", json=body, headers=bearer)
                ).status_code == 200
            bad = {
                "inputs": [
                    {"name": "INPUT0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}
                ]
            }
            assert (
                await api.post("/v2/models/m/infer", json=bad, headers=bearer)
            ).status_code == 400
        page = await client.get("/console/usage")  # written at once: the page flushes first
        assert page.status_code == 200
        assert page.text.count("<td>app</td>") == 5
        errors = await client.get("/console/usage?status=4xx&token=app")
        assert errors.text.count("<td>app</td>") == 1 and ">400</td>" in errors.text
        assert "No request matches." in (await client.get("/console/usage?model=zzz")).text
        for query, reason in [
            ("status=abc", "is a code (404) or a class (4xx)"),
            ("since=2026-13-01", "is not a date"),
            ("before=x", "not a row id"),
        ]:
            refused = await client.get(f"/console/usage?{query}")
            assert refused.status_code == 400 and reason in html.unescape(refused.text), query
        exported = await client.get("/console/usage.csv?token=app")
        assert exported.status_code == 200
        assert exported.headers["content-type"] == "text/csv; charset=utf-8"
        assert "attachment" in exported.headers["content-disposition"]
        lines = exported.text.strip().splitlines()
        assert lines[0] == "id,time,token_id,token,model,version,status,latency_ms,client"
        assert len(lines) == 1 + 5
        assert sorted(line.split(",")[6] for line in lines[1:]) == ["200"] * 4 + ["400"]
        anonymous = httpx.AsyncClient(transport=client._transport, base_url="http://test")
        async with anonymous:
            assert (await anonymous.get("/console/usage.csv")).status_code == 303


async def test_token_changes_through_the_admin_api_are_audited_too(tmp_path: Path) -> None:
    async with console_app(tmp_path, tokens=True) as (client, settings):
        await set_up(client)
        async with Database(settings.auth.database) as database:
            from server.auth.tokens import TokenSpec

            _, secret = await database.create(
                TokenSpec(name="ops", scopes=["admin", "read", "infer"])
            )
        api = httpx.AsyncClient(transport=client._transport, base_url="http://test")
        async with api:
            bearer = {"Authorization": f"Bearer {secret}"}
            made = await api.post("/admin/tokens", json={"name": "ci"}, headers=bearer)
            assert made.status_code == 201
            assert (await api.post("/admin/tokens/ci/pause", headers=bearer)).status_code == 200
            assert (await api.delete("/admin/tokens/ci", headers=bearer)).status_code == 200
        async with Database(settings.auth.database) as database:
            log = await Accounts(database).audit_log()
        done = [(e.actor, e.action, e.client) for e in log if e.target.startswith("token ci")]
        assert done == [
            ("token ops", "token.delete", "127.0.0.1"),
            ("token ops", "token.pause", "127.0.0.1"),
            ("token ops", "token.create", "127.0.0.1"),
        ]
