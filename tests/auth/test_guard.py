"""API tokens enforced in-process: the real app, a real SQLite file, an injected clock."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.auth import guard as guard_module
from server.auth.guard import Guard
from server.auth.store import Database
from server.auth.tokens import TokenSpec
from server.dataplane import DataPlane
from server.http.app import create_app
from server.http.routes import Access, Route, RouteTable
from server.reconciler import Reconciler
from server.settings import AuthSettings, Settings
from tests import onnx_models

pytestmark = pytest.mark.anyio

NOW = float(calendar.timegm((2026, 11, 30, 23, 59, 0)))  # a minute before December
INFER = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
TINY = """engine = "onnxruntime"
max_batch_size = 8

[[inputs]]
name = "INPUT0"
datatype = "FP32"
shape = [16]

[[outputs]]
name = "OUTPUT0"
datatype = "FP32"
shape = [16]
"""
EVERYTHING = ["infer", "read", "admin"]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, app: Any, guard: Guard, clock: Clock) -> None:
        self.app = app
        self.guard = guard
        self.clock = clock
        self.clients: dict[str, httpx.AsyncClient] = {}

    async def create(self, name: str, **fields: Any) -> str:
        _, plaintext = await self.guard.database.create(TokenSpec(name=name, **fields))
        await self.guard.reload()
        return plaintext

    async def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        address: str = "127.0.0.1",
        headers: dict[str, str] | list[tuple[bytes, bytes]] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        client = self.clients.get(address)
        if client is None:
            transport = httpx.ASGITransport(app=self.app, client=(address, 50000))
            client = httpx.AsyncClient(transport=transport, base_url="http://test")
            self.clients[address] = client
        all_headers = httpx.Headers(headers)
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        response = await client.request(method, path, headers=all_headers, **kwargs)
        assert response.status_code != 500, response.text
        return response

    async def infer(self, token: str | None, model: str = "tiny", **kwargs: Any) -> httpx.Response:
        return await self.request("POST", f"/v2/models/{model}/infer", token, json=INFER, **kwargs)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_models.dense(tmp_path_factory.mktemp("onnx") / "model.onnx", width=16)


@contextlib.asynccontextmanager
async def guarded(
    tmp_path: Path,
    tiny_onnx: Path,
    *,
    now: float = NOW,
    interval: float = 0.05,
    routes: tuple[Route, ...] = (),
    **auth: Any,
) -> AsyncIterator[Harness]:
    root = tmp_path / "models"
    onnx_models.model_folder(root, "tiny", TINY, {1: tiny_onnx})
    settings = Settings(
        auth=AuthSettings(enabled=True, database=tmp_path / "data" / "cinfer.db", **auth)
    )
    clock = Clock(now)
    guard = Guard(
        Database(settings.auth.database, clock=clock), settings.auth, clock=clock, interval=interval
    )
    dataplane = DataPlane(Reconciler(root))
    app = create_app(settings, dataplane, guard, routes)
    harness = Harness(app, guard, clock)
    async with app.running():
        await dataplane.wait_ready()
        try:
            yield harness
        finally:
            for client in harness.clients.values():
                await client.aclose()


@pytest.fixture
async def h(tmp_path: Path, tiny_onnx: Path) -> AsyncIterator[Harness]:
    async with guarded(tmp_path, tiny_onnx) as harness:
        yield harness


def assert_refused(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert list(response.json()) == ["error"]
    assert message in response.json()["error"], response.json()["error"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


async def wait_for(condition: Any, timeout: float = 5.0) -> float:
    """Seconds until `condition()` (a coroutine function) is true; fails after `timeout`."""
    start = time.monotonic()
    while not await condition():
        assert time.monotonic() - start < timeout, "condition not met in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


# -- who needs what ---------------------------------------------------------------------------

PROTECTED = [
    ("GET", "/v2"),
    ("GET", "/v2/models/tiny"),
    ("GET", "/v2/models/tiny/versions/1"),
    ("GET", "/v2/models/tiny/config"),
    ("GET", "/v2/models/tiny/ready"),
    ("GET", "/v2/models/tiny/stats"),
    ("GET", "/v2/models/stats"),
    ("POST", "/v2/models/tiny/infer"),
    ("POST", "/v2/models/tiny/versions/1/infer"),
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/tiny/load"),
    ("GET", "/admin/tokens"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
]


@pytest.mark.parametrize(
    ("method", "path", "permissions", "model", "version"),
    [
        ("GET", "/v2/health/live", None, None, None),
        ("GET", "/v2/health/ready", None, None, None),
        ("HEAD", "/v2/health/ready", None, None, None),
        ("POST", "/v2/models/m/infer", ("infer",), "m", None),
        ("POST", "/v2/models/m/versions/3/infer", ("infer",), "m", "3"),
        ("GET", "/v2/models/m", ("read",), "m", None),
        ("GET", "/v2/models/m/versions/3/config", ("read",), "m", "3"),
        ("GET", "/v2/models/m/stats", ("read",), "m", None),
        ("GET", "/v2/models/m/ready", ("read", "infer"), "m", None),
        ("GET", "/v2/models/stats", ("read",), None, None),
        ("GET", "/v2", ("read",), None, None),
        ("GET", "/openapi.json", ("read",), None, None),
        ("GET", "/metrics", ("read",), None, None),
        ("GET", "/docs", None, None, None),
        ("GET", "/docs/assets/swagger-ui.css", None, None, None),
        ("POST", "/v2/repository/index", ("admin",), None, None),
        ("POST", "/v2/repository/models/m/load", ("admin",), "m", None),
        ("POST", "/admin/tokens/x/pause", ("admin",), None, None),
        ("GET", "/admin/usage", ("admin",), None, None),
    ],
)
async def test_what_each_route_needs(
    h: Harness,
    method: str,
    path: str,
    permissions: tuple[str, ...] | None,
    model: str | None,
    version: str | None,
) -> None:
    table = h.app.table
    found = table.find(method, path)
    assert found.route is not None, f"{method} {path} is not in the route table"
    if permissions is None:
        assert found.need is None
    else:
        need = found.need
        assert need is not None and (need.permissions, need.model, need.version) == (
            permissions,
            model,
            version,
        )
        assert need.target == f"{method} {path}"
    public = RouteTable(table, public_metadata=True).find(method, path).need
    if permissions is not None and "read" in permissions:
        assert public is None
    else:
        assert public == found.need


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nowhere", 404),
        ("GET", "/", 404),
        ("GET", "/V2/health/live", 404),
        ("GET", "/v2/models/m/unknown", 404),
        ("GET", "/v2/models/tiny/infer", 405),
        ("DELETE", "/v2/health/live", 405),
    ],
)
async def test_what_the_table_does_not_declare_is_404_or_405_whatever_the_token(
    h: Harness, method: str, path: str, status: int
) -> None:
    admin = await h.create("admin", scopes=EVERYTHING)
    for token in (None, admin, "cinfer_000000000000_nonsense"):
        response = await h.request(method, path, token)
        assert response.status_code == status, (token, response.text)
        assert "Bearer" not in response.headers.get("www-authenticate", "")
        if status == 405:
            assert "allow" in response.headers


def test_a_route_without_a_declared_access_is_refused_at_start_up() -> None:
    async def endpoint(request: Any) -> Any:
        raise AssertionError("never called")

    with pytest.raises(TypeError, match="route GET /x declares no access"):
        Route("GET", "/x", endpoint, None, "no access")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="declared twice"):
        RouteTable(
            [
                Route("GET", "/x", endpoint, Access.PUBLIC, "one"),
                Route("GET", "/x", endpoint, Access.ADMIN, "two"),
            ]
        )


async def test_the_docs_page_and_its_assets_need_no_token_and_the_page_asks_for_one(
    h: Harness,
) -> None:
    page = await h.request("GET", "/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="token"' in page.text and "Authorization" in page.text
    css = await h.request("GET", "/docs/assets/swagger-ui.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    again = await h.request(
        "GET", "/docs/assets/swagger-ui.css", headers={"if-none-match": css.headers["etag"]}
    )
    assert again.status_code == 304
    assert (await h.request("GET", "/docs/assets/nothing.js")).status_code == 404
    # The document itself still needs a token, which the page sends once given.
    assert (await h.request("GET", "/openapi.json")).status_code == 401


async def test_health_is_public_and_every_other_route_needs_a_token(h: Harness) -> None:
    assert (await h.request("GET", "/v2/health/live")).status_code == 200
    assert (await h.request("GET", "/v2/health/ready")).status_code == 200
    for method, path in PROTECTED:
        response = await h.request(method, path, json=INFER if method == "POST" else None)
        assert_refused(response, 401, "needs an API token: send 'Authorization: Bearer cinfer_...'")
        assert response.headers["www-authenticate"] == 'Bearer realm="cinfer"'


async def test_a_token_with_every_scope_reaches_every_route(h: Harness) -> None:
    token = await h.create("all", scopes=EVERYTHING)
    response = await h.infer(token)
    assert response.status_code == 200 and response.json()["model_name"] == "tiny"
    for path in ["/v2", "/v2/models/tiny", "/v2/models/tiny/config", "/v2/models/tiny/ready"]:
        assert (await h.request("GET", path, token)).status_code == 200, path
    assert (await h.request("GET", "/openapi.json", token)).status_code == 200
    assert (await h.request("POST", "/v2/repository/index", token)).status_code == 200
    assert (await h.request("GET", "/admin/tokens", token)).status_code == 200
    # Past authentication, the app answers as always.
    assert (await h.infer(token, "missing")).status_code == 404


async def test_malformed_and_unknown_tokens_get_401(h: Harness) -> None:
    token = await h.create("ci")
    token_id = token.split("_")[1]
    wrong_secret = f"cinfer_{token_id}_{'A' * 43}"
    unknown_id = f"cinfer_ffffffffffff_{token.split('_')[2]}"
    cases = [
        ("Bearer", "malformed API token"),
        ("Bearer ", "malformed API token"),
        ("Bearer abc", "malformed API token"),
        (f"Bearer {token}x", "malformed API token"),
        (f"Bearer {token[:-1]}", "malformed API token"),
        ("Bearer " + "A" * 8000, "malformed API token"),
        ("Bearer cinfer_' OR 1=1; --_x", "malformed API token"),
        (
            "Bearer cinfer_000000000000_wrongsecret",
            "malformed API token: the secret after the id has 11 characters, not 43 "
            "(expected cinfer_<12 hex digits>_<43 letters and digits>)",
        ),
        (
            f"Bearer cinfer_ABCDEF012345_{'A' * 43}",
            "malformed API token: the id after cinfer_ is not 12 lower-case hex digits",
        ),
        ("Basic dXNlcjpwYXNz", "must be 'Bearer <token>'"),
        (token, "must be 'Bearer <token>'"),
        (f"Bearer {wrong_secret}", "unknown API token"),
        (f"Bearer {unknown_id}", "unknown API token"),
    ]
    for value, message in cases:
        response = await h.infer(None, headers={"Authorization": value})
        assert_refused(response, 401, message)
        assert token.split("_")[2] not in response.text
    # Bytes that are not text, a header given twice, a token in the query string.
    raw = [(b"authorization", b"Bearer \xff\xfe\x00cinfer")]
    assert_refused(await h.infer(None, headers=raw), 401, "malformed API token")
    twice = [(b"authorization", f"Bearer {token}".encode())] * 2
    assert_refused(await h.infer(None, headers=twice), 401, "more than one Authorization header")
    for query in (f"?token={token}", f"?access_token={token}", f"?authorization=Bearer%20{token}"):
        response = await h.request("POST", f"/v2/models/tiny/infer{query}", json=INFER)
        assert_refused(response, 401, "needs an API token")
    # The scheme is case-insensitive (RFC 7235).
    assert (await h.infer(None, headers={"Authorization": f"bearer {token}"})).status_code == 200


async def test_pause_resume_and_revoke_through_the_admin_api_take_effect_at_once(
    h: Harness,
) -> None:
    admin = await h.create("admin", scopes=EVERYTHING)
    token = await h.create("ci")
    assert (await h.infer(token)).status_code == 200
    assert (await h.request("POST", "/admin/tokens/ci/pause", admin)).json()["status"] == "paused"
    assert_refused(await h.infer(token), 401, "API token 'ci' is paused")
    assert (await h.request("POST", "/admin/tokens/ci/resume", admin)).json()["status"] == "active"
    assert (await h.infer(token)).status_code == 200
    assert (await h.request("POST", "/admin/tokens/ci/revoke", admin)).json()["status"] == "revoked"
    assert_refused(await h.infer(token), 401, "API token 'ci' was revoked")
    response = await h.request("POST", "/admin/tokens/ci/resume", admin)
    assert_refused(response, 409, "revocation is permanent")
    assert (await h.request("DELETE", "/admin/tokens/ci", admin)).status_code == 200
    assert_refused(await h.infer(token), 401, "unknown API token")


async def test_a_change_by_another_process_is_seen_within_a_second(h: Harness) -> None:
    token = await h.create("ci")
    assert (await h.infer(token)).status_code == 200
    async with Database(h.guard.database.path) as cli:
        await cli.set_status("ci", "paused")

    async def refused() -> bool:
        return (await h.infer(token)).status_code == 401

    assert await wait_for(refused) < 1.0


async def test_expiry_follows_the_clock(h: Harness) -> None:
    token = await h.create("temp", expires="12h")
    assert (await h.infer(token)).status_code == 200
    h.clock.now += 12 * 3600 - 1
    assert (await h.infer(token)).status_code == 200
    h.clock.now += 1
    assert_refused(await h.infer(token), 401, "API token 'temp' expired at 2026-12-01T11:59:00Z")
    admin = await h.create("admin", scopes=EVERYTHING)
    response = await h.request("POST", "/admin/tokens/temp/extend", admin, json={"expires": "1d"})
    assert response.json()["expires_at"] == "2026-12-02T11:59:00Z"
    assert (await h.infer(token)).status_code == 200


async def test_ipv4_and_ipv6_allowlists(h: Harness) -> None:
    token = await h.create("lan", ips=["10.0.0.0/8", "2001:db8::/32", "192.168.1.7"])
    for address in ["10.200.1.1", "192.168.1.7", "2001:db8::5", "::ffff:10.0.0.7"]:
        assert (await h.infer(token, address=address)).status_code == 200, address
    for address in ["192.168.1.8", "11.0.0.1", "2001:db9::1", "::1"]:
        response = await h.infer(token, address=address)
        assert_refused(response, 403, f"API token 'lan' may not be used from address {address}")


async def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(
    tmp_path: Path, tiny_onnx: Path
) -> None:
    async with guarded(tmp_path, tiny_onnx, trusted_proxies=["127.0.0.1", "10.9.0.0/16"]) as h:
        token = await h.create("office", ips=["203.0.113.7"])

        async def infer(address: str, forwarded: str | None) -> httpx.Response:
            headers = {"X-Forwarded-For": forwarded} if forwarded is not None else None
            return await h.infer(token, address=address, headers=headers)

        assert (await infer("127.0.0.1", "203.0.113.7")).status_code == 200
        assert (await infer("127.0.0.1", "203.0.113.7, 10.9.1.1")).status_code == 200
        assert (await infer("10.9.3.3", "198.51.100.1, 203.0.113.7")).status_code == 200
        # From anyone else the header is ignored.
        response = await infer("198.51.100.1", "203.0.113.7")
        assert_refused(response, 403, "from address 198.51.100.1")
        # Only the right-most untrusted entry counts: what the client wrote left of it is not.
        response = await infer("127.0.0.1", "203.0.113.7, 198.51.100.9")
        assert_refused(response, 403, "from address 198.51.100.9")
        assert_refused(await infer("127.0.0.1", None), 403, "from address 127.0.0.1")
        response = await infer("127.0.0.1", "203.0.113.7, not-an-address")
        assert_refused(response, 400, 'X-Forwarded-For entry "not-an-address" from proxy 127.0.0.1')


async def test_scopes_and_model_globs(h: Harness) -> None:
    runner = await h.create("runner", models=["tin?", "res*"])
    assert (await h.infer(runner)).status_code == 200
    assert (await h.infer(runner, "resnet50")).status_code == 404  # allowed, not served
    assert_refused(
        await h.infer(runner, "iris"), 403, "API token 'runner' may not use model 'iris'"
    )
    response = await h.request("POST", "/v2/models/iris/versions/1/infer", runner, json=INFER)
    assert_refused(response, 403, "may not use model 'iris'")
    response = await h.request("GET", "/v2/models/tiny", runner)
    assert_refused(
        response, 403, "lacks the read scope needed for GET /v2/models/tiny (model 'tiny')"
    )
    assert (await h.request("GET", "/v2/models/tiny/ready", runner)).status_code == 200
    assert_refused(await h.request("GET", "/v2/models/iris/ready", runner), 403, "model 'iris'")

    reader = await h.create("reader", scopes=["read"])
    assert (await h.request("GET", "/v2/models/tiny/config", reader)).status_code == 200
    response = await h.infer(reader)
    assert_refused(
        response, 403, "lacks the infer scope needed for POST /v2/models/tiny/infer (model 'tiny')"
    )
    response = await h.request("POST", "/v2/repository/models/tiny/unload", reader)
    assert_refused(
        response, 403, "lacks the admin scope needed for POST /v2/repository/models/tiny/unload"
    )
    assert_refused(await h.request("GET", "/admin/tokens", reader), 403, "lacks the admin scope")


async def test_rate_limit_answers_429_then_recovers(h: Harness) -> None:
    token = await h.create("burst", rate_limit=3)
    for _ in range(3):
        assert (await h.infer(token)).status_code == 200
    response = await h.infer(token)
    assert_refused(
        response, 429, "API token 'burst' is over its rate limit of 3 requests per minute"
    )
    assert response.headers["retry-after"] == "20"
    h.clock.now += 20
    assert (await h.infer(token)).status_code == 200
    assert (await h.infer(token)).status_code == 429
    h.clock.now += 60
    assert [(await h.infer(token)).status_code for _ in range(4)] == [200, 200, 200, 429]


async def test_monthly_quota_is_exhausted_then_resets_at_the_month_boundary(h: Harness) -> None:
    token = await h.create("monthly", monthly_quota=2)
    assert [(await h.infer(token)).status_code for _ in range(2)] == [200, 200]
    response = await h.infer(token)
    assert_refused(
        response,
        429,
        "API token 'monthly' has used its monthly quota of 2 requests; "
        "the quota resets at 2026-12-01T00:00:00Z",
    )
    assert response.headers["retry-after"] == "60"
    await h.guard.flush()
    stored = await h.guard.database.find("monthly")
    assert (stored.usage_month, stored.used) == ("2026-11", 2)  # refusals are not counted
    h.clock.now += 60  # midnight, 1 December
    assert (await h.infer(token)).status_code == 200
    await h.guard.flush()
    stored = await h.guard.database.find("monthly")
    # The file also counts the next lease, taken ahead; what was served is 1.
    assert (stored.usage_month, h.guard.current(stored).used) == ("2026-12", 1)
    assert stored.used == 2


async def test_public_metadata_opens_metadata_only(tmp_path: Path, tiny_onnx: Path) -> None:
    async with guarded(tmp_path, tiny_onnx, public_metadata=True) as h:
        for path in ["/v2", "/v2/models/tiny", "/v2/models/tiny/config", "/v2/models/tiny/ready"]:
            assert (await h.request("GET", path)).status_code == 200, path
        assert (await h.request("GET", "/openapi.json")).status_code == 200
        assert_refused(await h.infer(None), 401, "needs an API token")
        assert_refused(await h.request("GET", "/admin/tokens"), 401, "needs an API token")
        assert_refused(await h.request("POST", "/v2/repository/index"), 401, "needs an API token")


# -- the admin API ----------------------------------------------------------------------------


async def test_admin_api_creates_lists_changes_and_deletes(h: Harness) -> None:
    admin = await h.create("admin", scopes=EVERYTHING)
    response = await h.request(
        "POST",
        "/admin/tokens",
        admin,
        json={"name": "ci", "scopes": ["infer", "read"], "models": ["ti*"], "rate_limit": 100},
    )
    assert response.status_code == 201
    created = response.json()
    token = created.pop("token")
    assert token.startswith(f"cinfer_{created['id']}_")
    assert (
        created["scopes"] == ["infer", "read"] and created["created_at"] == "2026-11-30T23:59:00Z"
    )
    assert (await h.infer(token)).status_code == 200  # usable at once

    listed = (await h.request("GET", "/admin/tokens", admin)).json()["tokens"]
    assert [t["name"] for t in listed] == ["admin", "ci"]
    assert token.split("_")[2] not in str(listed) and all("token" not in t for t in listed)
    assert listed[1]["used_this_month"] == 1  # including what is not written yet

    one = (await h.request("GET", f"/admin/tokens/{created['id']}", admin)).json()
    assert one["name"] == "ci" and one["last_used_at"] == "2026-11-30T23:59:00Z"
    changed = await h.request(
        "PATCH", "/admin/tokens/ci", admin, json={"models": ["other"], "remark": "x"}
    )
    assert changed.json()["models"] == ["other"] and changed.json()["remark"] == "x"
    assert_refused(await h.infer(token), 403, "may not use model 'tiny'")
    reset = await h.request("POST", "/admin/tokens/ci/reset-usage", admin)
    assert reset.json()["used_this_month"] == 0
    assert (await h.request("DELETE", "/admin/tokens/ci", admin)).json()["name"] == "ci"
    assert_refused(
        await h.request("GET", "/admin/tokens/ci", admin), 404, "no token with id or name 'ci'"
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        (
            "POST",
            "/admin/tokens",
            {"name": "Robert'); DROP TABLE tokens;--"},
            400,
            "name: token name",
        ),
        (
            "POST",
            "/admin/tokens",
            {"name": "a", "ips": ["10.0.0.1/8"]},
            400,
            "did you mean 10.0.0.0/8?",
        ),
        ("POST", "/admin/tokens", {"name": "a", "models": ["*; --"]}, 400, "model pattern '*; --'"),
        (
            "POST",
            "/admin/tokens",
            {"name": "a", "expires": "yesterday"},
            400,
            "expires 'yesterday' is not a date",
        ),
        ("POST", "/admin/tokens", {"name": "a", "expires": "2026-01-01"}, 400, "is in the past"),
        (
            "POST",
            "/admin/tokens",
            {"name": "a", "scopes": "admin"},
            400,
            "scopes: Input should be a valid list",
        ),
        ("POST", "/admin/tokens", {"name": "a", "rate_limit": 1e300}, 400, "rate_limit"),
        ("POST", "/admin/tokens", {"name": "a", "id": "x"}, 400, "id: unknown field"),
        ("POST", "/admin/tokens", {}, 400, "name: Field required"),
        ("POST", "/admin/tokens", {"name": "admin"}, 409, "a token named 'admin' already exists"),
        ("POST", "/admin/tokens", b"{not json", 400, "request body is not valid JSON"),
        ("POST", "/admin/tokens", b"[1, 2]", 400, "request body must be a JSON object, got list"),
        ("POST", "/admin/tokens", b"x" * 70_000, 413, "admin request body exceeds 65536 bytes"),
        ("PATCH", "/admin/tokens/admin", {"status": "gone"}, 400, "status: Input should be"),
        (
            "PATCH",
            "/admin/tokens/nobody",
            {"remark": "x"},
            404,
            "no token with id or name 'nobody'",
        ),
        (
            "PATCH",
            "/admin/tokens/' OR 1=1 --",
            {"remark": "x"},
            404,
            'no token with id or name "\' OR 1=1 --"',
        ),
        ("POST", "/admin/tokens/admin/extend", {"until": "1d"}, 400, 'extend takes {"expires"'),
        ("GET", "/admin/usage?since=2026-13-01", None, 400, 'since="2026-13-01" is not a date'),
        ("GET", "/admin/usage?user=x", None, 400, "unknown query parameter(s) user"),
        ("GET", "/admin/usage?token=nobody", None, 404, "no token with id or name 'nobody'"),
        ("PUT", "/admin/tokens", None, 405, "method PUT is not allowed"),
    ],
)
async def test_admin_api_refuses_bad_input_with_4xx(
    h: Harness, method: str, path: str, body: Any, status: int, message: str
) -> None:
    admin = await h.create("admin", scopes=EVERYTHING)
    content = body if isinstance(body, bytes) else None
    json_body = body if isinstance(body, dict) else None
    response = await h.request(method, path, admin, content=content, json=json_body)
    assert_refused(response, status, message)


async def test_unicode_and_sql_in_names_and_remarks_are_kept_verbatim(h: Harness) -> None:
    admin = await h.create("admin", scopes=EVERYTHING)
    remark = 'Robert\'); DROP TABLE tokens;-- 🚀 «ünïcode» "q" %s ?'
    response = await h.request(
        "POST", "/admin/tokens", admin, json={"name": "cafe-uni", "remark": remark}
    )
    assert response.status_code == 201
    shown = (await h.request("GET", "/admin/tokens/cafe-uni", admin)).json()
    assert (shown["name"], shown["remark"]) == ("cafe-uni", remark)
    assert len((await h.request("GET", "/admin/tokens", admin)).json()["tokens"]) == 2


async def test_usage_aggregates_requests_and_errors_per_token_model_and_day(h: Harness) -> None:
    admin = await h.create("admin", scopes=EVERYTHING)
    runner = await h.create("runner", models=["tiny"])
    for _ in range(3):
        assert (await h.infer(runner)).status_code == 200
    assert (await h.infer(runner, "iris")).status_code == 403
    assert (await h.infer("nope")).status_code == 401
    h.clock.now += 120  # into December
    assert (await h.infer(runner)).status_code == 200
    answer = (await h.request("GET", "/admin/usage?model=tiny", admin)).json()
    assert [(u["day"], u["token_name"], u["requests"], u["errors"]) for u in answer["usage"]] == [
        ("2026-11-30", "runner", 3, 0),
        ("2026-12-01", "runner", 1, 0),
    ]
    # The request without a valid token is counted per day, address and status, not logged.
    assert answer["refused_without_token"] == [
        {"day": "2026-11-30", "client": "127.0.0.1", "status": 401, "requests": 1}
    ]
    iris = (await h.request("GET", "/admin/usage?token=runner&model=iris", admin)).json()["usage"]
    assert [(u["requests"], u["errors"]) for u in iris] == [(1, 1)]
    since = (await h.request("GET", "/admin/usage?since=2026-12-01&model=tiny", admin)).json()
    assert [u["day"] for u in since["usage"]] == ["2026-12-01"]
    rows = sqlite3.connect(h.guard.database.path).execute(
        "SELECT model, version, status, client FROM usage_log WHERE model = 'iris'"
    )
    assert list(rows) == [("iris", None, 403, "127.0.0.1")]


async def test_usage_log_keeps_the_status_each_infer_answered(
    tmp_path: Path, tiny_onnx: Path
) -> None:
    async with guarded(tmp_path, tiny_onnx, interval=3600) as h:
        token = await h.create("ci")
        assert (await h.infer(token)).status_code == 200
        assert (await h.infer(token, "ghost")).status_code == 404
        bad = await h.request(
            "POST", "/v2/models/tiny/infer", token, json={"inputs": [{"name": "x"}]}
        )
        assert bad.status_code == 400
        # A method the route table does not declare is answered before any token check.
        assert (await h.request("GET", "/v2/models/tiny/infer", token)).status_code == 405
        database = h.guard.database.path
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT model, status FROM usage_log ORDER BY id").fetchall()
    assert rows == [("tiny", 200), ("ghost", 404), ("tiny", 400)]


async def test_counts_are_written_in_batches_not_per_request_and_at_shutdown(
    tmp_path: Path, tiny_onnx: Path
) -> None:
    async with guarded(tmp_path, tiny_onnx, interval=3600) as h:
        token = await h.create("ci")
        for _ in range(5):
            assert (await h.infer(token)).status_code == 200
        database = h.guard.database.path
        with sqlite3.connect(database) as conn:
            assert conn.execute("SELECT used FROM tokens").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM usage_log").fetchone() == (0,)
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT used, usage_month FROM tokens").fetchone() == (5, "2026-11")
        assert conn.execute("SELECT count(*), min(status) FROM usage_log").fetchone() == (5, 200)


async def test_log_retention_zero_writes_no_usage_log(tmp_path: Path, tiny_onnx: Path) -> None:
    async with guarded(tmp_path, tiny_onnx, log_retention_days=0) as h:
        token = await h.create("ci")
        assert (await h.infer(token)).status_code == 200
        assert (await h.infer("bad")).status_code == 401
        await h.guard.flush()
        with sqlite3.connect(h.guard.database.path) as conn:
            assert conn.execute("SELECT count(*) FROM usage_log").fetchone() == (0,)
            assert conn.execute("SELECT used FROM tokens").fetchone() == (1,)


# -- with the rest of the server ---------------------------------------------------------------


async def test_rejections_are_counted_in_the_metrics_and_access_log(
    tmp_path: Path, tiny_onnx: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "models"
    onnx_models.model_folder(root, "tiny", TINY, {1: tiny_onnx})
    settings = Settings(
        server={"access_log": "text"},
        auth=AuthSettings(enabled=True, database=tmp_path / "data" / "cinfer.db"),
    )
    clock = Clock(NOW)
    guard = Guard(Database(settings.auth.database, clock=clock), settings.auth, clock=clock)
    dataplane = DataPlane(Reconciler(root))
    app = create_app(settings, dataplane, guard)
    harness = Harness(app, guard, clock)
    async with app.running():
        await dataplane.wait_ready()
        reader = await harness.create("reader", scopes=["read"])
        with caplog.at_level("INFO", logger="cinfer.access"):
            assert (await harness.infer(None)).status_code == 401
            assert (await harness.infer("cinfer_nope_nope")).status_code == 401
            assert (await harness.infer(reader)).status_code == 403
        scraped = await harness.request("GET", "/metrics", reader)
        for client in harness.clients.values():
            await client.aclose()
    assert 'cinfer_auth_rejections_total{status="401"} 2.0' in scraped.text
    assert 'cinfer_auth_rejections_total{status="403"} 1.0' in scraped.text
    logged = [r.getMessage() for r in caplog.records if r.name == "cinfer.access"]
    assert [line.split(" status=")[1].split()[0] for line in logged] == ["401", "401", "403"]


async def test_openapi_asks_for_a_bearer_token(h: Harness) -> None:
    reader = await h.create("reader", scopes=["read"])
    spec = (await h.request("GET", "/openapi.json", reader)).json()
    assert spec["components"]["securitySchemes"]["token"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "cinfer_<id>_<secret>",
    }
    assert spec["security"] == [{"token": []}]
    assert spec["paths"]["/v2/health/ready"]["get"]["security"] == []
    assert "security" not in spec["paths"]["/v2/models/tiny/infer"]["post"]
    # Every route the server answers is in the document, /admin included; the public ones
    # say so, the others document the refusals a token can get.
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    routes = {(r.method, r.path) for r in h.app.table if r.method != "WEBSOCKET"}
    assert routes <= documented, routes - documented
    assert ("PATCH", "/admin/tokens/{ref}") in documented
    assert ("GET", "/admin/usage") in documented
    for path in ("/docs", "/docs/assets/{file}", "/v2/health/live"):
        assert spec["paths"][path]["get"]["security"] == []
    infer = spec["paths"]["/v2/models/{model}/infer"]["post"]["responses"]
    assert {"401", "403", "429"} <= set(infer)


async def websocket(app: Any, path: str, token: str | None, say: str) -> list[dict[str, Any]]:
    """One WebSocket session against the ASGI app: connect, send `say`, leave; what it sent."""
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    scope = {"type": "websocket", "path": path, "headers": headers, "client": ("127.0.0.1", 1)}
    incoming = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": say},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    return sent


async def test_websocket_routes_are_authenticated_like_http_ones(
    tmp_path: Path, tiny_onnx: Path
) -> None:
    async def echo(scope: Any, receive: Any, send: Any, params: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        said = await receive()
        await send({"type": "websocket.send", "text": f"{params['model']}: {said['text']}"})
        await receive()

    stream = Route("WEBSOCKET", "/v2/models/{model}/echo", echo, Access.INFER, "echo", raw=True)
    async with guarded(tmp_path, tiny_onnx, routes=(stream,), interval=3600) as h:
        runner = await h.create("runner", scopes=["infer"], models=["tiny"])
        reader = await h.create("reader", scopes=["read"])

        refused = await websocket(h.app, "/v2/models/tiny/echo", None, "hi")
        assert refused == [
            {
                "type": "websocket.close",
                "code": 1008,
                "reason": "this endpoint needs an API token: send "
                "'Authorization: Bearer cinfer_...'",
            }
        ]
        lacking = await websocket(h.app, "/v2/models/tiny/echo", reader, "hi")
        assert lacking[0]["code"] == 1008
        assert (
            "lacks the infer scope needed for WebSocket /v2/models/tiny/echo"
            in (lacking[0]["reason"])
        )
        other = await websocket(h.app, "/v2/models/iris/echo", runner, "hi")
        assert other[0]["code"] == 1008 and "may not use model 'iris'" in other[0]["reason"]

        served = await websocket(h.app, "/v2/models/tiny/echo", runner, "hi")
        assert served == [
            {"type": "websocket.accept"},
            {"type": "websocket.send", "text": "tiny: hi"},
        ]
        unknown = await websocket(h.app, "/v2/models/tiny/nothing", runner, "hi")
        assert unknown == [{"type": "websocket.close", "code": 1008, "reason": "no route "
                            "/v2/models/tiny/nothing"}]  # fmt: skip
        await h.guard.flush()
        rows = sqlite3.connect(h.guard.database.path).execute(
            "SELECT model, status FROM usage_log ORDER BY id"
        )
        assert list(rows) == [("tiny", 403), ("iris", 403), ("tiny", 101)]
        refusals = sqlite3.connect(h.guard.database.path).execute(
            "SELECT client, status, requests FROM refusals"
        )
        assert list(refusals) == [("127.0.0.1", 401, 1)]  # the one without a token


# -- what a crash can cost (issue 12) -----------------------------------------------------------


async def test_quota_is_taken_from_the_database_before_it_is_served(
    tmp_path: Path, tiny_onnx: Path
) -> None:
    async with guarded(tmp_path, tiny_onnx, interval=3600) as h:
        token = await h.create("metered", monthly_quota=10_000)
        for _ in range(300):
            assert (await h.infer(token)).status_code == 200
        # Nothing flushed yet, yet the file already counts every request served, and at most
        # the rest of one lease (a quarter of it) and the next, taken ahead (1/100 of the
        # quota), beyond them.
        stored = await h.guard.database.find("metered")
        assert 300 <= stored.used <= 300 + 125
        shown = (await h.request("GET", "/admin/tokens/metered", await admin(h))).json()
        assert shown["used_this_month"] == 300
        database = h.guard.database.path
    with sqlite3.connect(database) as conn:  # the clean stop gave the unserved rest back
        assert conn.execute("SELECT used FROM tokens WHERE name = 'metered'").fetchone() == (300,)


async def test_the_next_lease_is_taken_before_the_current_one_runs_out(
    tmp_path: Path, tiny_onnx: Path
) -> None:
    async with guarded(tmp_path, tiny_onnx, interval=3600) as h:
        token = await h.create("steady", monthly_quota=10_000)
        assert (await h.infer(token)).status_code == 200  # waited for a lease of 1

        async def leased_ahead() -> int:
            while True:  # the lease taken in the background, after that one request
                grant = h.guard.identify(token)
                if grant.lease > 0:
                    return grant.lease
                await asyncio.sleep(0.01)

        assert await asyncio.wait_for(leased_ahead(), 10) == 2  # doubled: spent < 1 s
        stored = await h.guard.database.find("steady")
        assert stored.used == 1 + 2  # counted in the file before any of it is served
        for _ in range(2):
            assert (await h.infer(token)).status_code == 200
        shown = (await h.request("GET", "/admin/tokens/steady", await admin(h))).json()
        assert shown["used_this_month"] == 3


async def admin(h: Harness) -> str:
    return await h.create(f"admin-{len(h.guard._grants)}", scopes=EVERYTHING)


async def test_a_reset_forgets_the_lease_too(tmp_path: Path, tiny_onnx: Path) -> None:
    async with guarded(tmp_path, tiny_onnx) as h:
        token = await h.create("metered", monthly_quota=1000)
        for _ in range(20):
            assert (await h.infer(token)).status_code == 200
        await h.guard.reset_usage("metered")
        assert (await h.infer(token)).status_code == 200
        shown = (await h.request("GET", "/admin/tokens/metered", await admin(h))).json()
        assert shown["used_this_month"] == 1
        database = h.guard.database.path
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT used FROM tokens WHERE name = 'metered'").fetchone() == (1,)


async def test_refusals_without_a_token_are_counted_per_minute_address_and_status(
    h: Harness,
) -> None:
    for n in range(3):
        assert (await h.infer(None, address=f"10.0.0.{n % 2}")).status_code == 401
    assert (await h.infer("cinfer_nope", address="10.0.0.1")).status_code == 401
    h.clock.now += 60
    assert (await h.infer(None, address="10.0.0.1")).status_code == 401
    await h.guard.flush()
    with sqlite3.connect(h.guard.database.path) as conn:
        rows = conn.execute("SELECT minute, client, status, requests FROM refusals ORDER BY 1, 2")
        minute = int(NOW // 60)
        assert list(rows) == [
            (minute, "10.0.0.0", 401, 2),
            (minute, "10.0.0.1", 401, 2),
            (minute + 1, "10.0.0.1", 401, 1),
        ]
        assert conn.execute("SELECT count(*) FROM usage_log").fetchone() == (0,)
    # However many addresses a flood comes from, what is held between writes is bounded.
    for n in range(guard_module.MAX_REFUSAL_KEYS + 50):
        h.guard.refuse(NOW, f"address-{n}", 401)
    assert len(h.guard._refusals) == guard_module.MAX_REFUSAL_KEYS + 1
    assert h.guard._refusals[(int(NOW // 60), "*", 401)] == 50
