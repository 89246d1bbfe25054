"""The OpenAPI document is built from the route table: every route the server answers is in it,
with the answer shapes the DataPlane's typed answers declare."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.settings import Settings
from tests import onnx_models
from tests.conftest import running_app

pytestmark = pytest.mark.anyio


async def test_every_route_the_server_answers_is_documented(repo: Path) -> None:
    onnx_models.copy_samples(repo)
    settings = Settings.model_validate({"metrics": {"enabled": True}})
    async with running_app(repo, settings) as (client, _):
        spec = (await client.get("/openapi.json")).json()
        app = client._transport.app  # type: ignore[attr-defined]
        documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
        routes = {(r.method, r.path) for r in app.table if r.method != "WEBSOCKET"}
        assert routes <= documented, routes - documented
        for method, path in [
            ("GET", "/v2/models/stats"),
            ("GET", "/v2/models/{model}/stats"),
            ("GET", "/v2/models/{model}/versions/{version}"),
            ("GET", "/v2/models/{model}/versions/{version}/config"),
            ("POST", "/v2/models/{model}/versions/{version}/infer"),
            ("POST", "/v2/repository/models/{model}/load"),
            ("POST", "/v2/repository/models/{model}/unload"),
            ("GET", "/metrics"),
        ]:
            assert (method, path) in documented, (method, path)
        # Without authentication nothing asks for a token, and /admin is not served.
        assert "security" not in spec and not any(p.startswith("/admin") for p in spec["paths"])
        # The typed answers are the documented shapes.
        schemas = spec["components"]["schemas"]
        stats = spec["paths"]["/v2/models/stats"]["get"]["responses"]["200"]
        ref = stats["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/StatisticsAnswer"
        assert schemas["ModelStatistics"]["required"] == [
            "name",
            "version",
            "last_inference",
            "inference_count",
            "execution_count",
            "inference_stats",
            "batch_stats",
        ]
        ready = spec["paths"]["/v2/models/{model}/ready"]["get"]["responses"]
        assert ready["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/ModelReady")
        answered = (await client.get("/v2/models/stats")).json()
        assert set(answered["model_stats"][0]) == set(schemas["ModelStatistics"]["properties"])
        metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        assert list(metrics) == ["text/plain"]
        assert (await client.get("/metrics")).status_code == 200
