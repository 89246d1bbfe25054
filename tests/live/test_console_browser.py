"""The console in a real browser (chromium, driven by Playwright) against a real server:
first-run set-up, the dashboard and its live charts, sign-out, sign-in.

Every page is also photographed at 1280x800 and at 800 px wide; with CINFER_SCREENSHOTS set
to a folder (docs/console/ for docs/console.md) the pictures are kept there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import onnx_models
from tests.console import PASSWORD, TOML
from tests.live import live_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on this machine (make test installs it with apt)"
)

SIZES = {"wide": (1280, 800), "narrow": (800, 900)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("console")
    root = tmp / "models"
    onnx_models.dense_folder(root, "digits-like", TOML)
    onnx_models.dense_folder(root, "iris-like", TOML, seed=1)
    (root / "broken").mkdir()
    (root / "broken" / "model.toml").write_text('engine = "onnxruntime"\nmax_batch_size = "x"\n')
    env = {
        "CINFER_AUTH__ENABLED": "true",
        "CINFER_AUTH__DATABASE": str(tmp / "db" / "cinfer.db"),
        "CINFER_CONSOLE__ENABLED": "true",
    }
    with live_server(root, env=env) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("CINFER_SCREENSHOTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


def photograph(page: object, shots: Path, name: str) -> None:
    """The page at each size: nothing wider than the window (no sideways scrolling)."""
    for size, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})  # type: ignore[attr-defined]
        overflow = page.evaluate(  # type: ignore[attr-defined]
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{name} at {width} px is {overflow} px wider than the window"
        page.screenshot(path=str(shots / f"{name}-{size}.png"), full_page=True)  # type: ignore[attr-defined]
    page.set_viewport_size({"width": 1280, "height": 800})  # type: ignore[attr-defined]


def test_set_up_dashboard_sign_out_and_in(server: str, browser: object, shots: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    failed: list[tuple[str, str, int]] = []  # every answer >= 400 (401 for the wrong password)
    page.on(
        "response",
        lambda r: failed.append((r.request.method, r.url, r.status)) if r.status >= 400 else None,
    )

    page.goto(f"{server}/console")
    assert page.url == f"{server}/console/setup"
    photograph(page, shots, "setup")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Confirm password").fill(PASSWORD)
    page.get_by_role("button", name="Create admin account").click()

    page.wait_for_url(f"{server}/console")
    page.get_by_role("heading", name="Dashboard").wait_for()
    assert "2 READY" in page.inner_text("#model-states")
    assert "broken" in page.inner_text("main")  # its failed load, with the reason
    # The live stream connects and the charts draw.
    # (Selectors, not wait_for_function: the page's CSP forbids the eval that one needs.)
    page.wait_for_selector("#live-state.on")
    page.wait_for_selector("#charts .chart canvas")
    page.wait_for_selector("#queues tbody tr:nth-child(2)")
    photograph(page, shots, "dashboard")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{server}/console/login")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Wrong username or password.").wait_for()
    photograph(page, shots, "login")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server}/console")
    assert not problems, problems  # no script error, no resource blocked (CSP)
    assert failed == [("POST", f"{server}/console/login", 401)], failed
    page.close()
