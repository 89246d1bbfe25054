"""A token's rights never grow, and a limited token sees only what it may use (issue 12,
findings 6 and 7): a real server, tokens from the real CLI, the attacks as they were made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import onnx_models
from tests.auth.test_guard import INFER, TINY
from tests.live import live_server
from tests.live.test_auth import create, env  # noqa: F401 - fixture


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    weights = onnx_models.dense(tmp_path / "model.onnx")
    for name in ("iris", "digits"):
        onnx_models.model_folder(root, name, TINY, {1: weights})
    return root


class As:
    """Requests to `url` with one token."""

    def __init__(self, url: str, token: str) -> None:
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})

    def __enter__(self) -> As:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def __call__(self, method: str, path: str, json: Any = None) -> httpx.Response:
        response = self.client.request(method, path, json=json)
        assert response.status_code < 500, response.text
        return response

    def infer(self, model: str) -> int:
        return self("POST", f"/v2/models/{model}/infer", INFER).status_code

    def names(self) -> set[str]:
        return {t["name"] for t in self("GET", "/admin/tokens").json()["tokens"]}


def test_an_admin_limited_to_a_model_cannot_grow_its_rights(
    repo: Path,
    env: dict[str, str],  # noqa: F811
) -> None:
    root_token = create(env, "--name", "root", "--scope", "admin,read,infer")
    ops_token = create(env, "--name", "ops", "--scope", "admin,read,infer", "--models", "iris")
    with (
        live_server(repo, env=env) as (url, _),
        As(url, root_token) as root,
        As(url, ops_token) as ops,
    ):
        # The repository routes keep to its models.
        refused = ops("POST", "/v2/repository/models/digits/unload", {})
        assert refused.status_code == 403
        assert refused.json() == {"error": "API token 'ops' may not use model 'digits'"}
        assert root.infer("digits") == 200  # still served
        assert ops("POST", "/v2/repository/models/iris/load", {}).status_code == 200
        index = ops("POST", "/v2/repository/index", {}).json()
        assert {entry["name"] for entry in index} == {"iris"}
        assert {e["name"] for e in root("POST", "/v2/repository/index", {}).json()} == {
            "iris",
            "digits",
        }

        # Tokens beyond its own are refused, naming the field, and nothing is stored.
        for body, message in [
            ({"name": "a"}, "may not grant every model (its models: iris)"),
            ({"name": "b", "models": ["digits"]}, "may not grant model 'digits'"),
            ({"name": "c", "models": ["iri*"]}, "may not grant model 'iri*'"),
            ({"name": "d", "models": ["*"], "scopes": ["infer"]}, "may not grant model '*'"),
        ]:
            response = ops("POST", "/admin/tokens", body)
            assert response.status_code == 403, response.text
            assert message in response.json()["error"]
        assert root.names() == {"root", "ops"}
        # Widening itself is refused too.
        response = ops("PATCH", "/admin/tokens/ops", {"models": []})
        assert response.status_code == 403
        assert ops("PATCH", "/admin/tokens/ops", {"models": ["iris", "digits"]}).status_code == 403
        assert root("GET", "/admin/tokens/ops").json()["models"] == ["iris"]

        # Within its rights it still works: a token for iris, which cannot run digits.
        minted = ops("POST", "/admin/tokens", {"name": "app", "models": ["iris"]})
        assert minted.status_code == 201
        with As(url, minted.json()["token"]) as app:
            assert (app.infer("iris"), app.infer("digits")) == (200, 403)
        # It sees and manages only tokens within its rights.
        assert ops.names() == {"ops", "app"}
        for method, path in [
            ("GET", "/admin/tokens/root"),
            ("POST", "/admin/tokens/root/revoke"),
            ("PATCH", "/admin/tokens/root"),
            ("DELETE", "/admin/tokens/root"),
        ]:
            response = ops(method, path, {} if method == "PATCH" else None)
            assert response.status_code == 404, (method, path)
            assert response.json() == {"error": "no token with id or name 'root'"}
        assert root.infer("digits") == 200
        usage = ops("GET", "/admin/usage").json()
        assert {row["token_name"] for row in usage["usage"]} <= {"ops", "app"}


def test_permissions_addresses_rates_quotas_and_expiry_never_grow(
    repo: Path,
    env: dict[str, str],  # noqa: F811
) -> None:
    create(env, "--name", "root", "--scope", "admin,read,infer")
    lead = create(
        env, "--name", "lead", "--scope", "admin,infer", "--ips", "127.0.0.0/8",
        "--rate-limit", "1000", "--monthly-quota", "100000", "--expires", "30d",
    )  # fmt: skip
    within = {
        "models": [],
        "scopes": ["infer"],
        "ips": ["127.0.0.1"],
        "rate_limit": 500,
        "monthly_quota": 100,
        "expires": "7d",
    }
    with live_server(repo, env=env) as (url, _), As(url, lead) as lead_as:
        for change, message in [
            (
                {"scopes": ["infer", "read"]},
                "may not grant the read scope (its scopes: infer,admin)",
            ),
            ({"ips": []}, "may not grant every address (its ips: 127.0.0.0/8)"),
            ({"ips": ["10.0.0.0/8"]}, "may not grant address range 10.0.0.0/8"),
            ({"ips": ["0.0.0.0/0"]}, "may not grant address range 0.0.0.0/0"),
            ({"rate_limit": 0}, "may not grant rate_limit none (its rate_limit: 1000)"),
            ({"rate_limit": 5000}, "may not grant rate_limit 5000"),
            ({"monthly_quota": 0}, "may not grant monthly_quota none"),
            ({"expires": "never"}, "may not grant an expiry of never"),
            ({"expires": "90d"}, "may not grant an expiry of"),
        ]:
            response = lead_as("POST", "/admin/tokens", {"name": "x", **within, **change})
            assert response.status_code == 403, (change, response.text)
            assert message in response.json()["error"], response.text
        assert lead_as("POST", "/admin/tokens", {"name": "ok", **within}).status_code == 201
        # Extending its own expiry, or resetting usage (giving quota back), is growth too.
        assert lead_as("POST", "/admin/tokens/lead/extend", {"expires": "never"}).status_code == 403
        response = lead_as("POST", "/admin/tokens/ok/reset-usage")
        assert response.status_code == 403 and "may not reset usage" in response.text
        assert lead_as.names() == {"lead", "ok"}


def test_a_reader_limited_to_a_model_sees_only_that_model(
    repo: Path,
    env: dict[str, str],  # noqa: F811
) -> None:
    root_token = create(env, "--name", "root", "--scope", "admin,read,infer")
    reader_token = create(env, "--name", "reader", "--scope", "read", "--models", "iris")
    with (
        live_server(repo, env=env) as (url, _),
        As(url, root_token) as root,
        As(url, reader_token) as reader,
    ):
        assert reader("GET", "/v2/models/digits/stats").status_code == 403
        stats = reader("GET", "/v2/models/stats").json()["model_stats"]
        assert {s["name"] for s in stats} == {"iris"}
        assert {s["name"] for s in root("GET", "/v2/models/stats").json()["model_stats"]} == {
            "iris",
            "digits",
        }
        document = reader("GET", "/openapi.json").text
        assert "/v2/models/iris/infer" in document and "digits" not in document
        assert "/v2/models/digits/infer" in root("GET", "/openapi.json").text
        metrics = reader("GET", "/metrics")
        assert metrics.status_code == 403
        assert "needs a token without model limits" in metrics.json()["error"]
        assert 'model="digits"' in root("GET", "/metrics").text


def test_only_an_infer_token_may_register_shared_memory(
    repo: Path,
    env: dict[str, str],  # noqa: F811
) -> None:
    reader = create(env, "--name", "reader", "--scope", "read")
    caller = create(env, "--name", "caller", "--scope", "infer", "--models", "iris")
    register = {"key": "/cinfer-no-such-segment", "byte_size": 8}
    path = "/v2/systemsharedmemory/region/r/register"
    with live_server(repo, env=env) as (url, _), As(url, reader) as read, As(url, caller) as infer:
        assert httpx.post(f"{url}{path}", json=register).status_code == 401
        refused = read("POST", path, register)
        assert refused.status_code == 403 and "infer" in refused.json()["error"]
        assert read("GET", "/v2/systemsharedmemory/status").status_code == 403
        # An infer token gets as far as the segment, which does not exist.
        answer = infer("POST", path, register)
        assert answer.status_code == 400 and "no shared memory segment" in answer.json()["error"]
        assert infer("GET", "/v2/systemsharedmemory/status").json() == []
