"""The console's upload, follow, edit and delete pages in process: who may, CSRF, what reaches
the repository (and what does not), the git notice and diff, and the audit log."""

from __future__ import annotations

import io
import os
import re
import subprocess
import zipfile
from pathlib import Path

import anyio
import httpx
import pytest
from PIL import Image

from server.auth.accounts import Accounts
from server.auth.store import Database
from server.settings import Settings
from tests import onnx_models
from tests.console import console_app, csrf, set_up
from tests.console.test_manage import viewer_client

pytestmark = pytest.mark.anyio

ADDER = 'engine = "onnxruntime"\nmax_batch_size = 8\n'
SCRIPTED = {"X-Requested-With": "cinfer-console"}


def _adder_zip(tmp: Path, toml: str = ADDER) -> bytes:
    built = onnx_models.add_sub(tmp / "built-adder" / "model.onnx")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("adder/model.toml", toml)
        archive.write(built, "adder/1/model.onnx")
    return out.getvalue()


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def _upload(
    client: httpx.AsyncClient, archive: bytes, token: str, name: str = "adder",
    kind: str = "model", headers: dict[str, str] | None = None,
) -> httpx.Response:  # fmt: skip
    return await client.post(
        "/console/upload",
        data={"csrf": token, "kind": kind, "model": name},
        files={"archive": ("adder.zip", archive, "application/zip")},
        headers=headers,
    )


async def _audit(settings: Settings) -> list[tuple[str, str, str, str]]:
    async with Database(settings.auth.database) as database:
        log = await Accounts(database).audit_log()
    return [(e.actor, e.action, e.target, e.detail) for e in log]


async def _follow(client: httpx.AsyncClient, name: str, version: int) -> httpx.Response:
    """Poll the state fragment as the page does, until it says to stop (286)."""
    with anyio.fail_after(60):
        while True:
            answer = await client.get(f"/console/models/{name}/versions/{version}/state")
            if answer.status_code == 286:
                return answer
            assert answer.status_code == 200, answer.text
            await anyio.sleep(0.05)


async def test_an_upload_is_checked_published_and_followed_to_ready(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, settings):
        await set_up(client)
        page = await client.get("/console/upload")
        assert page.status_code == 200
        for label in ('for="model"', 'for="archive"', 'id="upload-progress"'):
            assert label in page.text
        answer = await _upload(client, _adder_zip(tmp_path), csrf(page))
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/models/adder?follow=1"
        followed = await client.get(answer.headers["location"])
        assert followed.status_code == 200
        assert 'hx-get="/console/models/adder/versions/1/state"' in followed.text
        state = await _follow(client, "adder", 1)
        assert 'data-state="READY"' in state.text
        # The page's script asks for JSON: where to go next.
        scripted = await _upload(
            client, _adder_zip(tmp_path), csrf(page), name="adder2", headers=SCRIPTED
        )
        assert scripted.status_code == 201
        assert scripted.json() == {"location": "/console/models/adder2?follow=1"}
        uploads = [e for e in await _audit(settings) if e[1] == "model.upload"]
        assert [(e[0], e[2]) for e in uploads] == [("root", "adder2"), ("root", "adder")]


async def test_a_refused_upload_says_why_and_changes_nothing(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, settings):
        await set_up(client)
        token = csrf(await client.get("/console/upload"))
        models = settings_root(tmp_path)
        before = _tree(models)
        broken = _adder_zip(tmp_path, toml='engine = "onnxruntime"\nmax_batch_size = -1\n')
        page = await _upload(client, broken, token)
        assert page.status_code == 400
        assert "adder/model.toml line 2: max_batch_size" in page.text
        scripted = await _upload(client, broken, token, headers=SCRIPTED)
        assert scripted.status_code == 400
        assert "line 2: max_batch_size" in scripted.json()["error"]
        taken = await _upload(client, _adder_zip(tmp_path), token, name="m")
        assert taken.status_code == 409 and "exists already" in taken.text
        no_file = await client.post(
            "/console/upload", data={"csrf": token, "kind": "model", "model": "x"}
        )
        assert no_file.status_code == 400 and "choose a .zip" in no_file.text
        odd = await _upload(client, _adder_zip(tmp_path), token, kind="patch")
        assert odd.status_code == 400 and "upload a new model or a version" in odd.text
        no_csrf = await _upload(client, _adder_zip(tmp_path), "forged")
        assert no_csrf.status_code == 403
        async with viewer_client(client, settings) as viewer:
            mine = csrf(await viewer.get("/console/upload"))
            assert (await _upload(viewer, _adder_zip(tmp_path), mine)).status_code == 403
        assert _tree(models) == before


def settings_root(tmp_path: Path) -> Path:
    return tmp_path / "models"


async def test_the_next_version_is_uploaded_from_the_model_page(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        model = await client.get("/console/models/m")
        assert 'href="/console/upload?kind=version&amp;model=m"' in model.text
        built = onnx_models.dense(tmp_path / "v2" / "model.onnx", seed=2)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            archive.write(built, "2/model.onnx")
        answer = await _upload(client, out.getvalue(), csrf(model), name="m", kind="version")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/models/m?follow=2"
        assert 'data-state="READY"' in (await _follow(client, "m", 2)).text
        assert (settings_root(tmp_path) / "m" / "2" / "model.onnx").is_file()


async def test_the_settings_form_and_the_editor_validate_before_writing(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, settings):
        await set_up(client)
        path = settings_root(tmp_path) / "m" / "model.toml"
        path.write_text('# the dense test model\nengine = "onnxruntime"\nmax_batch_size = 8\n')
        page = await client.get("/console/models/m/edit")
        assert page.status_code == 200
        for label in ('for="description"', 'for="instances"', 'for="toml"', 'for="latest"'):
            assert label in page.text
        token = csrf(page)
        form = {"csrf": token, "mode": "form", "description": "Sixteen wide", "instances": "2",
                "max_batch_size": "8", "batching": "on", "max_queue_delay_us": "500",
                "max_queue_size": "1024", "policy": "latest", "latest": "1"}  # fmt: skip
        saved = await client.post("/console/models/m/edit", data=form)
        assert saved.status_code == 303
        assert saved.headers["location"] == "/console/models/m/edit?done=saved"
        written = path.read_text()
        assert written.startswith("# the dense test model\n")  # the comment is kept
        assert 'description = "Sixteen wide"' in written and "instances = 2" in written
        assert "[batching]\nmax_queue_delay_us = 500" in written
        assert "max_queue_size" not in written  # the default is not written out
        detail = await client.get("/console/models/m")
        assert "Sixteen wide" in detail.text and "2 instance(s)" in detail.text

        bad = await client.post("/console/models/m/edit", data={**form, "instances": "two"})
        assert (
            bad.status_code == 400 and "instances: &#39;two&#39; is not a whole number" in bad.text
        )
        raw = await client.post(
            "/console/models/m/edit",
            data={"csrf": token, "mode": "raw", "toml": 'engine = "onnxruntime"\n\nworkers = 3\n'},
        )
        assert raw.status_code == 400
        assert "m/model.toml line 3: workers: unknown key" in raw.text
        assert "workers = 3" in raw.text  # what was typed is kept in the editor
        assert path.read_text() == written
        assert [e[3] for e in await _audit(settings) if e[1] == "model.edit"] == ["written"]
        async with viewer_client(client, settings) as viewer:
            seen = await viewer.get("/console/models/m/edit")
            assert seen.status_code == 200 and "cannot edit" in seen.text
            refused = await viewer.post("/console/models/m/edit", data={**form, "csrf": csrf(seen)})
            assert refused.status_code == 403
        assert path.read_text() == written


async def test_an_edit_in_a_git_work_tree_is_named_an_uncommitted_change(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        models = settings_root(tmp_path)
        git = ["git", "-C", str(models), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git, "init", "-q"], check=True)
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "models"], check=True)
        await set_up(client)
        page = await client.get("/console/models/m/edit")
        assert "This repository is a git work tree" in page.text
        assert "Nothing in this model's folder differs from the last commit." in page.text
        text = 'engine = "onnxruntime"\nmax_batch_size = 8\ninstances = 2\n'
        saved = await client.post(
            "/console/models/m/edit", data={"csrf": csrf(page), "mode": "raw", "toml": text}
        )
        assert saved.status_code == 303
        after = await client.get(saved.headers["location"])
        assert "uncommitted change" in after.text
        assert "+instances = 2" in after.text and "a/m/model.toml" in after.text


async def test_delete_needs_the_typed_name_and_moves_the_folder_aside(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, settings):
        await set_up(client)
        models = settings_root(tmp_path)
        page = await client.get("/console/models/m")
        assert 'for="confirm"' in page.text and '<option value="1">version 1</option>' in page.text
        token = csrf(page)
        wrong = await client.post(
            "/console/models/m/delete", data={"csrf": token, "target": "model", "confirm": "M"}
        )
        assert wrong.status_code == 400 and "nothing was deleted" in wrong.text
        assert (models / "m" / "1" / "model.onnx").is_file()
        forged = await client.post(
            "/console/models/m/delete", data={"csrf": "x", "target": "model", "confirm": "m"}
        )
        assert forged.status_code == 403 and (models / "m").is_dir()
        done = await client.post(
            "/console/models/m/delete", data={"csrf": token, "target": "model", "confirm": "m"}
        )
        assert done.status_code == 303 and done.headers["location"].startswith("/console/models?")
        assert not (models / "m").exists()
        moved = [p for p in (models / ".deleted").glob("*/m") if p.is_dir()]
        assert len(moved) == 1 and (moved[0] / "1" / "model.onnx").is_file()
        listing = await client.get(done.headers["location"])
        assert str(moved[0]) in listing.text
        assert (await client.get("/console/models/m")).status_code == 404
        entry = next(e for e in await _audit(settings) if e[1] == "model.delete")
        assert entry[:3] == ("root", "model.delete", "m") and entry[3] == f"moved to {moved[0]}"


async def test_api_docs_open_with_a_token_made_for_the_visit_and_gone_at_sign_out(
    tmp_path: Path,
) -> None:
    async with console_app(tmp_path, tokens=True) as (client, settings):
        await set_up(client)
        page = await client.get("/console/models")
        assert 'action="/console/api-docs"' in page.text
        assert (await client.post("/console/api-docs", data={"csrf": "x"})).status_code == 403
        opened = await client.post("/console/api-docs", data={"csrf": csrf(page)})
        assert opened.status_code == 200 and opened.headers["cache-control"] == "no-store"
        first = _docs_token(opened.text)
        assert 'data-docs="/docs"' in opened.text
        bearer = {"Authorization": f"Bearer {first}"}
        document = await client.get("/openapi.json", headers=bearer)
        assert document.status_code == 200
        paths = document.json()["paths"]
        assert "/admin/models/{model}" in paths  # the API's part
        assert not [p for p in paths if p.startswith("/console")]  # pages are for people
        assert (await client.get("/admin/tokens", headers=bearer)).status_code == 200
        again = _docs_token(
            (await client.post("/console/api-docs", data={"csrf": csrf(page)})).text
        )
        assert (await client.get("/openapi.json", headers=bearer)).status_code == 401
        assert (await client.get("/openapi.json", headers=_bearer(again))).status_code == 200
        made = [e for e in await _audit(settings) if e[1] == "token.create"]
        assert made[0][2].startswith("token console-docs-root (") and "for /docs" in made[0][3]
        async with viewer_client(client, settings) as viewer:
            mine = csrf(await viewer.get("/console/models"))
            seen = _docs_token((await viewer.post("/console/api-docs", data={"csrf": mine})).text)
            assert (await viewer.get("/openapi.json", headers=_bearer(seen))).status_code == 200
            assert (await viewer.get("/admin/tokens", headers=_bearer(seen))).status_code == 403
        await client.post("/console/logout", data={"csrf": csrf(page)})
        assert (await client.get("/openapi.json", headers=_bearer(again))).status_code == 401


async def test_api_docs_without_tokens_go_straight_to_the_docs(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        token = csrf(await client.get("/console/models"))
        answer = await client.post("/console/api-docs", data={"csrf": token})
        assert answer.status_code == 303 and answer.headers["location"] == "/docs"


def _docs_token(page: str) -> str:
    found = re.search(r'data-token="(cinfer_[^"]+)"', page)
    assert found, page[:2000]
    return found.group(1)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_every_console_route_sends_an_anonymous_visitor_to_sign_in(tmp_path: Path) -> None:
    """Each route of the console's table, anonymous: a page or action sends it to sign in and
    changes nothing; only set-up, sign-in and the static files answer."""
    async with console_app(tmp_path) as (client, settings):
        await set_up(client)
        app = client._transport.app  # type: ignore[attr-defined]
        routes = [r for r in app.table if r.path.startswith("/console")]
        assert len(routes) > 25
        values = {"model": "m", "version": "1", "ref": "x", "action": "revoke",
                  "file": "console.css"}  # fmt: skip
        before = _tree(settings_root(tmp_path))
        answered = {}
        async with httpx.AsyncClient(transport=client._transport, base_url="http://test") as anon:
            for route in routes:
                path = route.path.format(**{p: values[p] for p in route.parameters})
                answer = await anon.request(route.method, path, data={"confirm": "m"})
                answered[f"{route.method} {route.path}"] = (
                    answer.status_code,
                    answer.headers.get("location", ""),
                )
        public = {"GET /console/setup", "GET /console/login", "POST /console/login",
                  "POST /console/setup", "GET /console/static/{file}", "GET /console/live"}  # fmt: skip
        for route, (status, location) in answered.items():
            if route not in public:
                assert (status, location) == (303, "/console/login"), route
        assert answered["GET /console/live"][0] == 401
        assert answered["GET /console/static/{file}"][0] == 200
        assert _tree(settings_root(tmp_path)) == before
        assert [e[1] for e in await _audit(settings)] == ["account.create"]


async def test_try_it_takes_an_image_file_for_an_image_input(tmp_path: Path) -> None:
    async with console_app(tmp_path) as (client, _):
        models = settings_root(tmp_path)
        built = onnx_models.identity(tmp_path / "built-pix" / "model.onnx", "FP32", ["b", 1, 4, 4])
        toml = (
            'engine = "onnxruntime"\nmax_batch_size = 4\n\n[images.INPUT0]\n'
            'color = "grayscale"\nsize = [4, 4]\nscale = 0.5\n'
        )
        onnx_models.model_folder(models, "pix", toml, {1: built})
        await client.post("/v2/repository/models/pix/load")
        await set_up(client)
        page = await client.get("/console/models/pix/try")
        assert page.status_code == 200 and 'type="file"' in page.text
        out = io.BytesIO()
        Image.new("L", (8, 8), 200).save(out, "PNG")
        answer = await client.post(
            "/console/models/pix/try",
            data={"csrf": csrf(page), "body": _try_body(page.text)},
            files={"file_INPUT0": ("grey.png", out.getvalue(), "image/png")},
        )
        assert answer.status_code == 200, answer.text
        assert "<code>OUTPUT0</code>" in answer.text and "100.0" in answer.text  # 200 * 0.5


def _try_body(page: str) -> str:
    import html

    found = re.search(r'<textarea id="body" name="body"[^>]*>(.*?)</textarea>', page, re.S)
    assert found, page[:2000]
    return html.unescape(found.group(1))


PYTHON_TOML = """engine = "python"
max_batch_size = 4
[[inputs]]
name = "X"
datatype = "FP32"
shape = [2]
[[outputs]]
name = "Y"
datatype = "FP32"
shape = [2]
"""
PYTHON_MODEL = """import os

import numpy as np


class Double:
    def __init__(self, folder, parameters):
        with open(parameters["marker"], "a") as f:
            f.write(str(os.getpid()) + "\\n")

    def predict(self, inputs):
        return {"Y": inputs["X"] * 2}
"""


async def test_an_admin_uploads_a_python_model_and_the_page_says_it_runs_code(
    tmp_path: Path,
) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        marker = tmp_path / "constructed"
        z.writestr("double/model.toml", PYTHON_TOML + f'[parameters]\nmarker = "{marker}"\n')
        z.writestr("double/1/model.py", PYTHON_MODEL)
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        page = await client.get("/console/upload")
        assert 'id="code-notice"' in page.text
        assert "Only admin\naccounts upload models, so only admins can add code" in page.text
        answer = await _upload(client, archive.getvalue(), csrf(page), name="double")
        assert answer.status_code == 303, answer.text
        state = await _follow(client, "double", 1)
        assert 'data-state="READY"' in state.text
        # The code ran twice in worker processes: staged (the check), then published.
        constructed = marker.read_text().split()
        assert len(constructed) == 2 and str(os.getpid()) not in constructed
