"""The dashboard's live stream from a real server (uvicorn on a free port, read over real
HTTP: the in-process transport would wait for the stream's end): the samples it sends, and
the GPU charts and devices the dashboard shows, with NVML as this machine has it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from server.console.live import Sample
from tests import onnx_models
from tests.conftest import missing_gpu
from tests.console import TOML, set_up
from tests.live import live_server

pytestmark = pytest.mark.anyio

FIELDS = set(Sample.__dataclass_fields__) - {"gpus"}
"""A sample's fields on any machine; GPU ones (gpu0_percent, ...) come beside them."""


@contextlib.contextmanager
def console_server(tmp_path: Path) -> Iterator[str]:
    onnx_models.dense_folder(tmp_path / "models", "m", TOML)
    env = {
        "CINFER_CONSOLE__ENABLED": "true",
        "CINFER_AUTH__DATABASE": str(tmp_path / "db" / "cinfer.db"),
    }
    with live_server(tmp_path / "models", env=env) as (url, _):
        yield url


@contextlib.asynccontextmanager
async def signed_in(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        assert (await set_up(client)).status_code == 303
        yield client


async def first_sample(client: httpx.AsyncClient) -> dict[str, Any]:
    """The first ``sample`` event of the live stream (one sampling interval away)."""
    async with client.stream("GET", "/console/live") as stream:
        assert stream.status_code == 200
        kind = ""
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind == "sample":
                sample: dict[str, Any] = orjson.loads(line.removeprefix("data: "))
                return sample
    raise AssertionError("the stream ended without a sample")


@pytest.mark.skipif(missing_gpu() is None, reason="this machine has an NVIDIA GPU")
async def test_without_a_gpu_samples_have_no_gpu_fields_and_the_dashboard_no_gpu_chart(
    tmp_path: Path,
) -> None:
    with console_server(tmp_path) as url:
        async with signed_in(url) as client:
            sample = await first_sample(client)
            assert set(sample) == FIELDS, sample
            page = (await client.get("/console")).text
            assert 'data-series="cpu_percent"' in page  # the other charts are there
            assert "gpu0_" not in page and "GPU utilisation" not in page
            assert "GPU " not in page  # nor a GPU in the devices list


@pytest.mark.gpu
async def test_with_a_gpu_each_sample_and_the_dashboard_show_it(tmp_path: Path) -> None:
    with console_server(tmp_path) as url:
        async with signed_in(url) as client:
            sample = await first_sample(client)
            assert set(sample) > FIELDS, sample
            assert 0 <= sample["gpu0_percent"] <= 100
            assert 0 <= sample["gpu0_used_gib"] <= sample["gpu0_total_gib"]
            assert sample["gpu0_total_gib"] > 0
            page = (await client.get("/console")).text
            assert "GPU utilisation (%)" in page and 'data-series="gpu0_percent' in page
            assert "GPU memory used (GiB)" in page and "GPU 0: " in page
