"""The reconciler in-process, driven by the real watcher or the repository API over real files."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from server.errors import NotFound
from tests.conftest import eventually, repository_settings, running_app
from tests.onnx_models import dense, dense_folder, identity

pytestmark = pytest.mark.anyio

TOML = 'engine = "onnxruntime"\nmax_batch_size = 8\n'
BODY = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}]}


async def index(client: httpx.AsyncClient) -> list[dict[str, str]]:
    response = await client.post("/v2/repository/index")
    assert response.status_code == 200
    return response.json()


def write_model(repo: Path, name: str = "m", toml: str = TOML, seed: int = 0) -> Path:
    return dense_folder(repo, name, toml, seed)


async def test_instances_and_batching_change_in_place(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_model(repo)
    caplog.set_level(logging.INFO, logger="cinfer")
    async with running_app(repo, repository_settings()) as (client, dataplane):
        version = dataplane.reconciler.models["m"].versions[1]
        pool = version.pool
        assert pool is not None and pool.instances == 1
        engine = pool.engine

        (folder / "model.toml").write_text(TOML + "instances = 2\n")
        await eventually(lambda: version.config.instances == 2, "the change applied")
        assert pool.instances == 2
        # Same version, same pool, same engine: the model file was not loaded again.
        assert dataplane.reconciler.models["m"].versions[1] is version
        assert version.pool is pool and pool.engine is engine and version.ready
        config = (await client.get("/v2/models/m/config")).json()
        assert config["instance_group"][0]["count"] == 2
        assert (await client.post("/v2/models/m/infer", json=BODY)).status_code == 200

        (folder / "model.toml").write_text(TOML + "instances = 2\n[batching]\nmax_queue_size = 7\n")
        await eventually(lambda: pool.config.batching is not None, "batching switched on")
        assert dataplane.reconciler.models["m"].versions[1] is version
        config = (await client.get("/v2/models/m/config")).json()
        assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 7
        assert (await client.post("/v2/models/m/infer", json=BODY)).status_code == 200
    loads = [r.message for r in caplog.records if "-> LOADING" in r.message]
    assert loads == ["model m version 1: UNKNOWN -> LOADING"]
    assert "reconfigured in place, model file not reloaded (1 -> 2 instances" in caplog.text


async def test_other_changes_load_a_new_version_beside_the_old(repo: Path) -> None:
    folder = write_model(repo)
    async with running_app(repo, repository_settings()) as (client, dataplane):
        old = dataplane.reconciler.models["m"].versions[1]
        (folder / "model.toml").write_text(TOML + '[parameters]\noptimization = "basic"\n')
        await eventually(
            lambda: dataplane.reconciler.models["m"].versions[1] is not old, "the new load"
        )
        new = dataplane.reconciler.models["m"].versions[1]
        assert new.ready and new.config.parameters == {"optimization": "basic"}
        await eventually(lambda: old.pool is None, "the old version unloaded")
        assert old.state.value == "UNAVAILABLE" and old.reason == "unloaded"
        assert (await client.post("/v2/models/m/infer", json=BODY)).status_code == 200


async def test_explicit_mode_loads_only_what_the_api_asks_for(repo: Path) -> None:
    folder = write_model(repo)
    model_file = folder / "1" / "model.onnx"
    async with running_app(repo, repository_settings("explicit")) as (client, dataplane):
        assert dataplane.watcher is None
        assert (await client.get("/v2/health/ready")).status_code == 200
        assert await index(client) == [
            {"name": "m", "state": "UNAVAILABLE", "reason": "not loaded"}
        ]
        assert (await client.get("/v2/models/m")).status_code == 404

        assert (await client.post("/v2/repository/models/m/load")).status_code == 200
        assert await index(client) == [
            {"name": "m", "version": "1", "state": "READY", "reason": ""}
        ]
        first = (await client.post("/v2/models/m/infer", json=BODY)).json()["outputs"][0]["data"]

        # Loading again with nothing changed keeps the loaded version as it is.
        version = dataplane.reconciler.models["m"].versions[1]
        assert (await client.post("/v2/repository/models/m/load")).status_code == 200
        assert dataplane.reconciler.models["m"].versions[1] is version

        # A load that fails keeps the old version serving and says why.
        good = model_file.read_bytes()
        model_file.write_bytes(good[:100])
        response = await client.post("/v2/repository/models/m/load")
        assert response.status_code == 400
        error = response.json()["error"]
        assert f"failed to load model 'm': version 1: onnxruntime cannot load {model_file}" in error
        assert error.endswith("(still serving version 1)")
        (entry,) = await index(client)
        assert entry["state"] == "READY" and "onnxruntime cannot load" in entry["reason"]
        response = await client.post("/v2/models/m/infer", json=BODY)
        assert response.json()["outputs"][0]["data"] == first

        # Fixed: the new file loads and serves.
        dense(model_file, seed=5)
        assert (await client.post("/v2/repository/models/m/load")).status_code == 200
        response = await client.post("/v2/models/m/infer", json=BODY)
        assert response.json()["outputs"][0]["data"] != first

        assert (await client.post("/v2/repository/models/m/unload")).status_code == 200
        assert (await client.get("/v2/models/m")).status_code == 404
        assert (await client.post("/v2/models/m/infer", json=BODY)).status_code == 404
        assert await index(client) == [{"name": "m", "state": "UNAVAILABLE", "reason": "unloaded"}]
        await eventually(lambda: version.pool is None, "version 1 closed")

        response = await client.post("/v2/repository/models/nope/load")
        assert response.status_code == 404
        assert response.json() == {"error": "no folder for model 'nope' in the repository"}
        response = await client.post("/v2/repository/models/nope/unload")
        assert response.status_code == 404
        (repo / ".m.tmp").mkdir()
        for hidden in ("..", ".", ".m.tmp"):  # folders, but not models
            with pytest.raises(NotFound):
                await dataplane.load_model(hidden, None)
            with pytest.raises(NotFound):
                await dataplane.unload_model(hidden)


async def test_a_model_that_never_loaded_shows_why(repo: Path) -> None:
    write_model(repo, toml=TOML + "instance = 2\n")
    async with running_app(repo, repository_settings("startup")) as (client, dataplane):
        assert dataplane.watcher is None
        (entry,) = await index(client)
        assert entry["state"] == "UNAVAILABLE"
        assert entry["reason"].endswith("m/model.toml line 3: instance: unknown key")
        response = await client.get("/v2/models/m")
        assert response.status_code == 503 and "instance: unknown key" in response.json()["error"]
        response = await client.post("/v2/repository/models/m/load")
        assert response.status_code == 400 and "instance: unknown key" in response.json()["error"]
        assert (await client.get("/v2/health/ready")).status_code == 200


async def test_in_watch_mode_an_unload_holds_until_the_folder_changes(repo: Path) -> None:
    held = write_model(repo, "held")
    other = write_model(repo, "other")
    async with running_app(repo, repository_settings()) as (client, dataplane):
        models = dataplane.reconciler.models
        assert (await client.post("/v2/repository/models/held/unload")).status_code == 200
        assert "held" not in models

        # A change elsewhere is picked up; the unloaded model stays unloaded.
        (other / "model.toml").write_text(TOML + 'description = "changed"\n')
        await eventually(lambda: models["other"].description == "changed", "other reconfigured")
        assert "held" not in models
        assert {"name": "held", "state": "UNAVAILABLE", "reason": "unloaded"} in await index(client)

        # Its own folder changing again ends the hold.
        (held / "model.toml").write_text(TOML + 'description = "back"\n')
        await eventually(
            lambda: "held" in models and 1 in models["held"].versions, "held loaded again"
        )
        assert models["held"].versions[1].ready and models["held"].description == "back"
        assert (await client.post("/v2/models/held/infer", json=BODY)).status_code == 200


async def test_a_broken_new_version_leaves_the_old_one_serving(repo: Path) -> None:
    folder = write_model(repo)
    async with running_app(repo, repository_settings()) as (client, dataplane):
        models = dataplane.reconciler.models

        def state(number: int) -> tuple[str, str] | None:
            version = models["m"].versions.get(number)
            return None if version is None else (version.state.value, version.reason)

        # Version 2 without its model file: UNAVAILABLE with the reason; 1 serves on.
        (folder / "2").mkdir()
        await eventually(lambda: state(2), "version 2 tried")
        v2_reason = f"missing model file {folder / '2' / 'model.onnx'}"
        assert state(2) == ("UNAVAILABLE", v2_reason)
        metadata = (await client.get("/v2/models/m/versions/2")).json()
        assert metadata["state"] == "UNAVAILABLE" and metadata["reason"] == v2_reason
        assert {"name": "m", "version": "2", "state": "UNAVAILABLE", "reason": v2_reason} in (
            await index(client)
        )
        response = await client.post("/v2/models/m/infer", json=BODY)
        assert response.json()["model_version"] == "1"

        # A file whose inputs do not match model.toml's declaration: the schema mismatch.
        declared = TOML + '[[inputs]]\nname = "INPUT0"\ndatatype = "FP32"\nshape = [16]\n'
        (folder / "model.toml").write_text(declared)
        identity(folder / "2" / "model.onnx", "INT32", ["batch", 16])
        await eventually(lambda: "INT32" in str(state(2)), "the mismatch reason")
        assert state(2) == (
            "UNAVAILABLE",
            "input 'INPUT0': declared datatype FP32, model file has INT32",
        )
        assert state(1) == ("READY", "still serving: the versions version_policy selects failed")
        response = await client.post("/v2/models/m/infer", json=BODY)
        assert response.json()["model_version"] == "1"

        # Fixed: version 2 serves, version 1 (no longer selected) unloads.
        dense(folder / "2" / "model.onnx", seed=2)
        await eventually(lambda: state(2) == ("READY", "") and state(1) is None, "the swap")
        response = await client.post("/v2/models/m/infer", json=BODY)
        assert response.json()["model_version"] == "2"
