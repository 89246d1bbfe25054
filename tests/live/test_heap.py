"""The garbage collector on a real server (server/heap.py).

Full collections once walked every object the process held, 30-40 ms each, several times a
second under load (the p99 of tiny c=32 with auth on was 30 ms). The server now freezes what
it holds after each model change and collects its young objects rarely: a burst of requests
triggers no full collection, and a model change settles the heap again. Both show in the
``cinfer_gc_*`` metrics, which are what is asserted here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import onnx_models
from tests.live import live_server

TOML = 'engine = "onnxruntime"\nmax_batch_size = 8\n'
BODY = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("heap") / "models"
    root.mkdir()
    onnx_models.dense_folder(root, "m", TOML)
    onnx_models.dense_folder(root, "other", TOML, seed=1)
    with live_server(root) as (url, _):
        yield url


def gc_metrics(url: str) -> dict[str, float]:
    """cinfer_gc_* samples: 'collections 2', 'pause 2', 'frozen' -> value."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cinfer_gc_collections_total":
                found[f"collections {sample.labels['generation']}"] = sample.value
            elif sample.name == "cinfer_gc_pause_seconds_total":
                found[f"pause {sample.labels['generation']}"] = sample.value
            elif sample.name == "cinfer_gc_frozen_objects":
                found["frozen"] = sample.value
    assert {"collections 2", "pause 2", "frozen"} <= found.keys(), text
    return found


def wait_for(condition: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """`check()` once it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.05)


async def burst(url: str, requests: int, concurrency: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def worker(n: int) -> list[int]:
            return [
                (await client.post("/v2/models/m/infer", json=BODY)).status_code for _ in range(n)
            ]

        shares = [requests // concurrency] * concurrency
        results = await asyncio.gather(*(worker(n) for n in shares))
    return [status for part in results for status in part]


def test_the_heap_is_frozen_after_the_start_up_load(server: str) -> None:
    settled = wait_for(
        "the start-up settle",
        lambda: (m := gc_metrics(server))["frozen"] > 10_000 and m,
    )
    assert settled["collections 2"] >= 1  # the settle's own full collection


def test_a_burst_of_requests_triggers_no_full_collection(server: str) -> None:
    before = wait_for("the start-up settle", lambda: (m := gc_metrics(server))["frozen"] and m)
    statuses = asyncio.run(burst(server, 2000, 16))
    assert statuses == [200] * 2000
    after = gc_metrics(server)
    assert after["collections 2"] == before["collections 2"]
    assert after["pause 2"] == before["pause 2"]


def test_a_model_change_settles_the_heap_again(server: str) -> None:
    before = wait_for("the start-up settle", lambda: (m := gc_metrics(server))["frozen"] and m)
    response = httpx.post(f"{server}/v2/repository/models/other/unload", timeout=30)
    assert response.status_code == 200
    wait_for(
        "a full collection after the unload",
        lambda: gc_metrics(server)["collections 2"] > before["collections 2"],
    )
    assert httpx.post(f"{server}/v2/models/m/infer", json=BODY).status_code == 200
