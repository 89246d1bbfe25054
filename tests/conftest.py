from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from server.app import create_app
from server.dataplane import DataPlane
from server.reconciler import Reconciler
from server.settings import Settings


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
    async with app.router.lifespan_context(app):
        await dataplane.wait_ready()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, dataplane
