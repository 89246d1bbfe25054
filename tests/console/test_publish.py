"""Publish and unpublish: ``enabled = false`` in model.toml, kept across restarts, served
nothing meanwhile, and the file otherwise as it was (server/manage/toml_text.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.manage.toml_text import with_enabled
from tests.console import console_app, csrf, set_up

pytestmark = pytest.mark.anyio

BODY = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}


def test_the_enabled_line_is_added_replaced_and_removed_and_nothing_else_moves() -> None:
    text = '# my model\nengine = "onnxruntime"\n\n[batching]\nenabled = true  # not ours\n'
    off = with_enabled(text, False)
    assert off == "enabled = false\n" + text
    assert with_enabled(off, False) == off  # once
    assert with_enabled(off, True) == text  # publishing gives the file back as it was
    replaced = with_enabled('enabled = true\nengine = "x"\n', False)
    assert replaced == 'enabled = false\nengine = "x"\n'
    assert with_enabled('engine = "x"\nenabled = false', True) == 'engine = "x"\n'


async def test_unpublish_stops_serving_keeps_the_folder_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "models" / "m" / "model.toml"
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        original = manifest.read_text()
        assert (await client.post("/v2/models/m/infer", json=BODY)).status_code == 200
        page = await client.get("/console/models/m")
        assert ">Unpublish</button>" in page.text
        refused = await client.post("/console/models/m/unpublish", data={"csrf": "nope"})
        assert refused.status_code == 403 and manifest.read_text() == original
        done = await client.post("/console/models/m/unpublish", data={"csrf": csrf(page)})
        assert done.status_code == 303
        assert manifest.read_text() == "enabled = false\n" + original
        assert (await client.get("/v2/models/m/ready")).status_code != 200
        assert (await client.post("/v2/models/m/infer", json=BODY)).status_code in (404, 503)
        shown = await client.get(done.headers["location"])
        assert "Unpublished:" in shown.text and ">Publish</button>" in shown.text
        assert (tmp_path / "models" / "m" / "1" / "model.onnx").is_file()
    # A restart reads the file: still unpublished.
    async with console_app(tmp_path) as (client, _):
        page = await client.get("/console/login")
        await client.post(
            "/console/login",
            data={"username": "root", "password": "correct horse battery", "csrf": csrf(page)},
        )
        assert (await client.get("/v2/models/m/ready")).status_code != 200
        listing = await client.get("/console/models")
        assert "unpublished: enabled = false" in listing.text
        page = await client.get("/console/models/m")
        done = await client.post("/console/models/m/publish", data={"csrf": csrf(page)})
        assert done.status_code == 303
        assert manifest.read_text() == original
        assert (await client.get("/v2/models/m/ready")).status_code == 200
        assert (await client.post("/v2/models/m/infer", json=BODY)).status_code == 200
        audit = (await client.get("/console/audit")).text
        assert "<code>model.unpublish</code>" in audit and "<code>model.publish</code>" in audit
