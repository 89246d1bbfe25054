"""Console tests: what they share (a console app in process, forms and their CSRF tokens)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from server.auth.guard import Guard
from server.auth.store import Database
from server.cache import ResponseCache
from server.dataplane import DataPlane
from server.http.app import create_app
from server.reconciler import Reconciler
from server.settings import AuthSettings, ConsoleSettings, Settings
from tests import onnx_models

TOML = 'engine = "onnxruntime"\nmax_batch_size = 8\n'
PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def repository(root: Path) -> Path:
    """A repository with model `m` (dense, INPUT0 -> OUTPUT0, [batch, 16])."""
    models = root / "models"
    if not (models / "m").is_dir():  # a second start over the same root keeps what it finds
        models.mkdir(parents=True, exist_ok=True)
        onnx_models.dense_folder(models, "m", TOML)
    return models


@contextlib.asynccontextmanager
async def console_app(
    root: Path,
    *,
    tokens: bool = False,
    proxies: tuple[str, ...] = (),
    cache: ResponseCache | None = None,
    **console: float,
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    """The server in process with the console on (and API tokens when `tokens`, the
    response cache when given)."""
    settings = Settings(
        auth=AuthSettings(
            enabled=tokens, database=root / "data" / "cinfer.db", trusted_proxies=list(proxies)
        ),
        console=ConsoleSettings(enabled=True, **console),
    )
    models = repository(root)
    dataplane = DataPlane(Reconciler(models), "startup", 50, cache)
    guard = Guard(Database(settings.auth.database), settings.auth) if tokens else None
    app = create_app(settings, dataplane, guard)
    async with app.running():
        await dataplane.wait_ready()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, settings


def csrf(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, f"no CSRF field in the page:\n{page.text[:2000]}"
    return found.group(1)


async def set_up(client: httpx.AsyncClient, username: str = "root") -> httpx.Response:
    """Create the first admin through the set-up page (the client keeps the session)."""
    page = await client.get("/console/setup")
    return await client.post(
        "/console/setup",
        data={"username": username, "password": PASSWORD, "confirm": PASSWORD,
              "csrf": csrf(page)},
    )  # fmt: skip


async def sign_in(
    client: httpx.AsyncClient, username: str, password: str = PASSWORD
) -> httpx.Response:
    page = await client.get("/console/login")
    return await client.post(
        "/console/login", data={"username": username, "password": password, "csrf": csrf(page)}
    )
