"""The console in a real browser (chromium, driven by Playwright) against a real server:
first-run set-up, the dashboard and its live charts, the models and a model, a token made,
its requests charted, its limits changed and the token revoked in the console and the API's
answers to it, the audit log, sign-out, sign-in.

Every page is also photographed at 1280x800 and at 800 px wide; with CINFER_SCREENSHOTS set
to a folder (docs/console/ for docs/console.md) the pictures are kept there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import onnx_models
from tests.console import PASSWORD, TOML
from tests.live import CHROMIUM, chromium, live_server

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on this machine (make test installs it with apt)"
)

SIZES = {"wide": (1280, 800), "narrow": (800, 900)}
ADDER = 'description = "A + B and A - B"\nengine = "onnxruntime"\nmax_batch_size = 8\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("console")
    root = tmp / "models"
    onnx_models.dense_folder(root, "digits-like", TOML)
    onnx_models.dense_folder(root, "iris-like", TOML, seed=1)
    onnx_models.copy_samples(root)  # the shipped sample models, digits and iris
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
def adder_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zipped model folder to upload: adder/model.toml, adder/1/model.onnx (A + B, A - B)."""
    tmp = tmp_path_factory.mktemp("upload")
    built = onnx_models.add_sub(tmp / "built" / "model.onnx")
    path = tmp / "adder.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("adder/model.toml", ADDER)
        archive.write(built, "adder/1/model.onnx")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as launched:
        yield launched


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


def test_the_operators_story(server: str, browser: object, shots: Path, adder_zip: Path) -> None:
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
    assert "4 READY" in page.inner_text("#model-states")
    assert "broken" in page.inner_text("main")  # its failed load, with the reason
    # The live stream connects and the charts draw.
    # (Selectors, not wait_for_function: the page's CSP forbids the eval that one needs.)
    page.wait_for_selector("#live-state.on")
    page.wait_for_selector("#charts .chart canvas")
    page.wait_for_selector("#queues tbody tr:nth-child(4)")
    listed = page.locator("#queues tbody tr td:first-child").all_inner_texts()
    assert {"digits", "iris"} <= set(listed), listed  # the dashboard lists the sample models
    photograph(page, shots, "dashboard")

    page.get_by_role("link", name="Models").click()
    page.wait_for_url(f"{server}/console/models")
    assert "UNAVAILABLE" in page.inner_text("table.models")
    photograph(page, shots, "models")
    page.get_by_role("link", name="digits-like").click()
    page.get_by_role("heading", name="digits-like").wait_for()
    assert "INPUT0" in page.inner_text("main")
    photograph(page, shots, "model")

    # Upload a zipped model: checked in staging, published, followed until READY.
    page.get_by_role("navigation").get_by_role("link", name="Models").click()
    page.get_by_role("link", name="Upload a model").click()
    page.get_by_role("heading", name="Upload a model").wait_for()
    page.get_by_label("Model name").fill("adder")
    page.get_by_label("Archive").set_input_files(str(adder_zip))
    photograph(page, shots, "upload")
    page.get_by_role("button", name="Upload and check").click()
    page.wait_for_url(f"{server}/console/models/adder?follow=1")
    page.wait_for_selector('#follow [data-state="READY"]')
    assert "A + B and A - B" in page.inner_text("main")
    photograph(page, shots, "uploaded")
    page.get_by_role("link", name="Edit").click()
    page.get_by_role("heading", name="Edit adder").wait_for()
    photograph(page, shots, "edit")
    page.get_by_label("Instances").fill("2")
    page.get_by_role("button", name="Save settings").click()
    page.get_by_text("Saved: model.toml was written").wait_for()
    page.get_by_role("main").get_by_role("link", name="adder").click()
    page.get_by_role("heading", name="Version 1").wait_for()
    assert "2 instance(s)" in page.inner_text("main")  # reloaded with the new setting
    # Try it on the uploaded model, through the grid: A + B and A - B come back.
    page.get_by_role("link", name="Try it").click()
    for i in range(4):
        page.get_by_label(f"A[0][{i}]", exact=True).fill(str(i + 1))
        page.get_by_label(f"B[0][{i}]", exact=True).fill(str(10 * (i + 1)))
    page.get_by_role("button", name="Run inference").click()
    page.get_by_text("answered in").wait_for()
    result = page.inner_text("#result")
    assert "11.0, 22.0, 33.0, 44.0" in result and "-9.0, -18.0, -27.0, -36.0" in result, result

    # A token made in the console works on the API; revoked in the console, it does not.
    page.get_by_role("link", name="Tokens").click()
    page.get_by_label("Name", exact=True).fill("reader")
    page.get_by_label("read", exact=True).check()  # beside infer, checked already
    page.get_by_role("button", name="Create token").click()
    secret = page.inner_text("#new-token")
    assert secret.startswith("cinfer_")
    bearer = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{server}/v2/models/digits-like", headers=bearer).status_code == 200
    photograph(page, shots, "tokens")

    # Try it: one inference from the page, and the three snippets work when pasted.
    page.goto(f"{server}/console/models/digits-like")
    page.get_by_role("link", name="Try it").click()
    page.get_by_role("button", name="Run inference").click()
    page.get_by_text("answered in").wait_for()
    assert "OUTPUT0" in page.inner_text("#result")
    photograph(page, shots, "try")
    env = {**os.environ, "TOKEN": secret}
    for number, command in [(1, ["bash", "-c"]), (2, [sys.executable, "-c"]),
                            (3, [sys.executable, "-c"])]:  # fmt: skip
        code = page.inner_text(f"#snippet-{number}")
        assert "cinfer_" not in code  # a placeholder, never the secret
        ran = subprocess.run([*command, code], env=env, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, (code, ran.stdout, ran.stderr)
        assert "OUTPUT0" in ran.stdout, (code, ran.stdout, ran.stderr)
    # The snippets' requests are on the tokens page's chart and on the token's own, whose
    # form changes its limits.
    page.goto(f"{server}/console/tokens")
    page.wait_for_selector(".daily-chart canvas")
    photograph(page, shots, "tokens-chart")
    page.get_by_role("link", name="reader", exact=True).click()
    page.get_by_role("heading", name="reader").wait_for()
    page.wait_for_selector(".daily-chart canvas")
    page.get_by_label("Rate limit").fill("600")
    page.get_by_role("button", name="Save changes").click()
    page.get_by_text("Saved:").wait_for()
    assert page.get_by_label("Rate limit").input_value() == "600"
    photograph(page, shots, "token")
    page.goto(f"{server}/console/tokens")
    page.get_by_role("button", name="Revoke reader").click()
    page.get_by_text("revoked", exact=True).wait_for()
    assert httpx.get(f"{server}/v2/models/digits-like", headers=bearer).status_code == 401
    page.get_by_role("link", name="Usage").click()
    page.get_by_role("heading", name="Usage").wait_for()
    assert "reader" in page.inner_text("table")  # the snippets' requests, and the 401
    assert "401" in page.inner_text("table")
    photograph(page, shots, "usage")
    page.get_by_role("link", name="Audit log").click()
    page.get_by_text("token.revoke").wait_for()
    photograph(page, shots, "audit")
    # The API docs open signed in: the console made a token for the visit (no pasting).
    page.get_by_role("button", name="API docs").click()
    page.wait_for_url(f"{server}/docs")
    page.wait_for_selector(".swagger-ui .opblock-tag")  # /openapi.json fetched with the token
    assert page.input_value("#token").startswith("cinfer_")  # nothing to paste
    page.goto(f"{server}/console/audit")

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
