from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest

from server.dataplane import DataPlane
from server.http.app import create_app
from server.reconciler import Reconciler
from server.scheduler import InstancePool
from server.settings import RepositorySettings, Settings
from tests import onnx_models

T = TypeVar("T")

# Servers the tests start (python -m server, cinfer serve) would all take gRPC's default port
# 8001: the gRPC door is off unless a test turns it on (tests/live/test_grpc*.py).
os.environ.setdefault("CINFER_GRPC__ENABLED", "false")


def missing_gpu() -> str | None:
    """Why there is no NVIDIA GPU to test on, or None when the driver lists one."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return None
    return "no NVIDIA GPU on this machine (the driver lists none in /proc/driver/nvidia/gpus)"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None:
        reason = missing_gpu()
        if reason:
            pytest.skip(reason)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """An empty model repository in a temp folder."""
    root = tmp_path / "models"
    root.mkdir()
    return root


@contextlib.asynccontextmanager
async def running_app(
    root: Path, settings: Settings | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, DataPlane]]:
    """The app in-process over `root`, start-up load finished, with an httpx client."""
    settings = settings or Settings()
    dataplane = DataPlane(Reconciler(root), settings.repository.mode, settings.repository.settle_ms)
    app = create_app(settings, dataplane)
    async with app.running():
        await dataplane.wait_ready()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, dataplane


def slow_model(repo: Path, batching: str) -> None:
    """Model `slow` (8 layers of 512, max_batch_size 1024) with the given [batching] keys."""
    onnx_models.dense(repo / "slow" / "1" / "model.onnx", width=512, layers=8)
    (repo / "slow" / "model.toml").write_text(
        f'engine = "onnxruntime"\nmax_batch_size = 1024\n[batching]\n{batching}\n'
    )


async def queued_behind_a_held_request(
    client: httpx.AsyncClient, dataplane: DataPlane, count: int
) -> list[httpx.Response]:
    """Send `count` one-row requests to `slow` while another holds its only instance (see
    `held`), and let it go once each of them is queued or refused; their answers."""
    pool = dataplane.reconciler.models["slow"].get(None).pool
    assert pool is not None
    one_row = {
        "inputs": [{"name": "INPUT0", "shape": [1, 512], "datatype": "FP32", "data": [0.0] * 512}]
    }

    def infer() -> asyncio.Task[httpx.Response]:
        return asyncio.create_task(client.post("/v2/models/slow/infer", json=one_row))

    with held(pool) as holding:
        holder = infer()
        await eventually(holding.is_set, "the first request to hold the only instance")
        tasks = [infer() for _ in range(count)]
        await eventually(
            lambda: sum(t.done() for t in tasks) + pool.pending - 1 == count,
            f"{count} requests to be queued or refused",
        )
    assert (await holder).status_code == 200
    return list(await asyncio.gather(*tasks))


def repository_settings(mode: str = "watch", settle_ms: int = 100) -> Settings:
    """Settings for an in-process app over a temp repository (a short settle by default)."""
    return Settings(repository=RepositorySettings(mode=mode, settle_ms=settle_ms))  # type: ignore[arg-type]


async def eventually(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` on the loop until it is truthy; fail after `timeout` (CI is slow)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


#: Models in `many_tiny`: a repository as large as the one issue 11's finding 12 measured.
MANY = 300
TINY = 'engine = "onnxruntime"\nmax_batch_size = 8\n'


@pytest.fixture
def many_tiny(repo: Path) -> Path:
    """MANY copies of a one-layer 16x16 model (the benchmarks' `tiny`): m000, m001, ..."""
    built = onnx_models.dense(repo.parent / "built" / "model.onnx", width=16)
    for i in range(MANY):
        onnx_models.model_folder(repo, f"m{i:03d}", TINY, {1: built})
    return repo


async def ticks_while(work: Awaitable[T]) -> tuple[int, T]:
    """Run `work` as a task; the loop turns this task got before it was done, and its result.

    Deterministic: a task that yields with `asyncio.sleep(0)` alternates with this one, so
    the count says how often `work` gave the loop back, whatever the machine's speed."""
    task = asyncio.ensure_future(work)
    ticks = 0
    while not task.done():
        ticks += 1
        await asyncio.sleep(0)
    return ticks, task.result()


class _HeldEngine:
    """A pool's engine whose first run waits for the test: see `held`."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.running = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def run(
        self, instance: int, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        with self._lock:
            first = not self.running.is_set()
            self.running.set()
        if first:
            self.release.wait()
        return self.engine.run(instance, inputs, outputs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


@contextlib.contextmanager
def held(pool: InstancePool) -> Iterator[threading.Event]:
    """Hold `pool`'s instance busy for as long as the block runs, however fast or loaded the
    machine: the first request an instance takes waits inside the engine until the block exits,
    then runs on the real engine. Yields an Event, set once that request is waiting there.

    A long request would hold it too, for a time that depends on the machine: under load the
    queued requests were late and met neither the full queue nor the timeout behind it."""
    gate = _HeldEngine(pool.engine)
    pool.engine = gate
    try:
        yield gate.running
    finally:
        gate.release.set()
        pool.engine = gate.engine
