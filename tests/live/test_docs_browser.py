"""/docs in a real browser (chromium, driven by Playwright) against a server with tokens on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests import onnx_models
from tests.auth.test_guard import TINY
from tests.live import CHROMIUM, ROOT, chromium, live_server

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on this machine (make test installs it with apt)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("docs")
    root = tmp / "models"
    onnx_models.model_folder(root, "tiny", TINY, {1: onnx_models.dense(tmp / "model.onnx")})
    env = {"CINFER_AUTH__ENABLED": "true", "CINFER_AUTH__DATABASE": str(tmp / "db" / "c.db")}
    made = subprocess.run(
        [sys.executable, "-m", "server", "tokens", "create", "--name", "reader",
         "--scope", "read"],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    with live_server(root, env=env) as (url, _):
        yield url, made.stdout.strip()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as launched:
        yield launched


def test_the_docs_page_asks_for_a_token_then_lists_and_calls_the_api(
    server: tuple[str, str], browser: object
) -> None:
    url, token = server
    page = browser.new_page()  # type: ignore[attr-defined]
    assets = []
    page.on("response", lambda r: assets.append((r.url, r.status)))
    page.goto(f"{url}/docs")
    # The page and Swagger UI's files load without a token; the document is not fetched yet.
    page.wait_for_selector("#token-form")
    assert all(status == 200 for u, status in assets if "/docs" in u), assets
    assert not any(u.endswith("/openapi.json") for u, _ in assets)

    with page.expect_response(lambda r: r.url.endswith("/openapi.json")) as fetched:
        page.fill("#token", token)
        page.click("#token-form button")
    assert fetched.value.status == 200
    page.wait_for_selector(".opblock")
    listed = page.inner_text("#swagger-ui")
    for path in ("/v2/health/live", "/v2/models/{model}/infer", "/v2/models/tiny/infer", "/v2"):
        assert path in listed, path

    # "Try it out" on server metadata: the call carries the token and succeeds.
    block = page.locator("#operations-metadata-get_v2")
    block.locator(".opblock-summary").click()
    block.locator("button.try-out__btn").click()
    with page.expect_response(lambda r: r.url == f"{url}/v2") as answered:
        block.locator("button.execute").click()
    assert answered.value.status == 200
    assert answered.value.json()["name"] == "cinfer"
    page.close()


def test_a_wrong_token_gets_the_servers_401_in_the_page(
    server: tuple[str, str], browser: object
) -> None:
    url, _ = server
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(f"{url}/docs")
    with page.expect_response(lambda r: r.url.endswith("/openapi.json")) as fetched:
        page.fill("#token", "cinfer_000000000000_" + "A" * 43)
        page.click("#token-form button")
    assert fetched.value.status == 401
    page.wait_for_selector("text=Failed to load API definition")
    page.close()
