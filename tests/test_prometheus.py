"""/metrics over a large repository: a scrape gives the event loop back while it renders,
grows linearly with the models, and the metrics port serves the same text (issue 11,
finding 12). The counts themselves are in test_metrics.py. Behaviour only, no elapsed-time
thresholds (CI is 2 loaded cores).
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server import prometheus
from server.dataplane import DataPlane
from server.prometheus import Exposition
from server.settings import Settings
from tests import onnx_models
from tests.conftest import MANY, running_app, ticks_while
from tests.live import free_port

pytestmark = pytest.mark.anyio

ONE = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}


@pytest.fixture
async def served(many_tiny: Path) -> AsyncIterator[tuple[httpx.AsyncClient, DataPlane]]:
    async with running_app(many_tiny) as (client, dataplane):
        assert len(dataplane.reconciler.models) == MANY
        yield client, dataplane


def per_model(text: str) -> collections.Counter[str]:
    """Sample lines per `model` label."""
    return collections.Counter(re.findall(r'^[a-z_]+\{.*\bmodel="(m\d+)"', text, re.MULTILINE))


async def test_a_scrape_gives_the_loop_back_every_chunk_of_models(
    served: tuple[httpx.AsyncClient, DataPlane],
) -> None:
    client, dataplane = served
    chunk = 8
    ticks, body = await ticks_while(Exposition(dataplane.reconciler, chunk=chunk).render())
    # A loop turn for others after every `chunk` versions, and no version left out.
    assert ticks >= MANY // chunk
    assert set(per_model(body.decode())) == {f"m{i:03d}" for i in range(MANY)}

    # Through the endpoint: another request is answered while a scrape is under way.
    scrape = asyncio.create_task(client.get("/metrics"))
    assert (await client.get("/v2/health/live")).status_code == 200
    assert not scrape.done()
    assert (await scrape).status_code == 200
    ticks, _ = await ticks_while(client.get("/metrics"))
    assert ticks >= MANY // prometheus.CHUNK


async def test_a_scrape_grows_linearly_with_the_models(
    served: tuple[httpx.AsyncClient, DataPlane],
) -> None:
    client, dataplane = served
    assert (await client.post("/v2/models/m007/infer", json=ONE)).status_code == 200
    text = (await client.get("/metrics")).text
    # Every version has the same lines, whatever it served: a scrape is a fixed part (the
    # process metrics) plus the same amount per version.
    (each,) = set(per_model(text).values())
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {f.name for f in prometheus.FAMILIES} <= families
    for i in range(100, 200):
        await dataplane.unload_model(f"m{i:03d}")
    fewer = (await client.get("/metrics")).text
    assert set(per_model(fewer).values()) == {each}
    assert len(per_model(fewer)) == MANY - 100
    assert fewer.count("\n") == text.count("\n") - 100 * each
    assert {f.name for f in text_string_to_metric_families(fewer)} == families


async def test_a_model_unloaded_during_a_scrape_is_left_out(
    served: tuple[httpx.AsyncClient, DataPlane],
) -> None:
    _, dataplane = served
    scrape = asyncio.create_task(Exposition(dataplane.reconciler, chunk=1).render())
    await asyncio.sleep(0)  # the scrape has listed the models and rendered m000
    # What the unload API does once it has checked the folder, without its thread hop: the
    # scrape (MANY loop turns at chunk=1) is still under way when the model goes.
    dataplane.reconciler._remove("m299", "unloaded during a scrape")
    assert not scrape.done()
    body = (await scrape).decode()
    assert "m299" not in per_model(body)
    assert len(per_model(body)) == MANY - 1


async def test_the_metrics_port_serves_the_same_renderer(repo: Path) -> None:
    onnx_models.copy_samples(repo)
    port = free_port()
    settings = Settings.model_validate({"metrics": {"port": port}})
    async with (
        running_app(repo, settings) as (client, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as scraper,
    ):
        assert (await client.get("/metrics")).status_code == 404  # not on the API's port
        scraped = await scraper.get("/metrics")
        assert scraped.status_code == 200
        assert scraped.headers["content-type"] == prometheus.CONTENT_TYPE
        types = {f.name: f.type for f in text_string_to_metric_families(scraped.text)}
        assert types["nv_inference_count"] == "counter"
        assert 'nv_inference_count{model="iris",version="1"} 0\n' in scraped.text
        assert "process_resident_memory_bytes" in types
        assert (await scraper.get("/")).status_code == 404
        assert (await scraper.post("/metrics")).status_code == 405
        assert (await scraper.head("/metrics")).status_code == 200
    # Stopped with the app: nothing listens on the port any more.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics")
