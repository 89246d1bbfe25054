"""The model page shows the response cache's hit rate (server/console/models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.cache import LocalStore, ResponseCache
from tests import onnx_models
from tests.console import TOML, console_app, repository, set_up

pytestmark = pytest.mark.anyio


async def test_the_model_page_shows_the_hit_rate(tmp_path: Path) -> None:
    models = repository(tmp_path)
    onnx_models.dense_folder(models, "cached", TOML + "[cache]\nenabled = true\n")
    cache = ResponseCache(LocalStore(1 << 20))
    async with console_app(tmp_path, cache=cache) as (client, _):
        await set_up(client)
        page = await client.get("/console/models/cached")
        assert "Response cache" in page.text and "on, no lookup yet" in page.text
        body = {
            "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1] * 16}]
        }
        for _ in range(4):
            answer = await client.post("/v2/models/cached/infer", json=body)
            assert answer.status_code == 200, answer.text
        page = await client.get("/console/models/cached")
        assert "75.0% hit rate (3 of 4 lookups), 1 entries" in page.text
        assert "Response cache" not in (await client.get("/console/models/m")).text
