"""Watch mode against a real server process and real files in a temp repository."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from server.watcher import model_of
from tests.conftest import eventually, repository_settings, running_app
from tests.live import live_server, server_log, wait_until
from tests.onnx_models import dense, dense_folder, model_folder

TOML = 'engine = "onnxruntime"\nmax_batch_size = 8\n'
SETTLE = {"CINFER_REPOSITORY__SETTLE_MS": "300"}


def infer(client: httpx.Client, model: str = "m") -> httpx.Response:
    return client.post(
        f"/v2/models/{model}/infer",
        json={
            "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}]
        },
    )


def index(client: httpx.Client) -> list[dict[str, str]]:
    response = client.post("/v2/repository/index")
    assert response.status_code == 200
    return response.json()


def entries(client: httpx.Client, name: str) -> list[dict[str, str]]:
    return [e for e in index(client) if e["name"] == name]


def staged(tmp_path: Path, name: str = "m", versions: tuple[int, ...] = (1,)) -> Path:
    """A complete model folder outside the repository, ready to be copied in."""
    stage = tmp_path / "stage"
    files = {v: dense(tmp_path / "files" / str(v) / "model.onnx", seed=v) for v in versions}
    return model_folder(stage, name, TOML, files)


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("m/model.toml", "m"),
        ("m/1/model.onnx", "m"),
        ("m", "m"),
        (".git/objects/ab/cd", None),
        ("m/.git/HEAD", None),
        (".m.tmp/1/model.onnx", None),
        ("m/.model.toml.swp", None),
        ("m/model.toml.swp", None),
        ("m/model.toml~", None),
        ("m/.#model.toml", None),
        ("m/4913", None),
        ("bad name/model.toml", None),
        ("", None),
    ],
)
def test_which_events_count(tmp_path: Path, path: str, model: str | None) -> None:
    assert model_of(tmp_path, str(tmp_path / path)) == model
    assert model_of(tmp_path, "/elsewhere/m/model.toml") is None


def test_copy_in_loads_and_delete_unloads(tmp_path: Path, repo: Path) -> None:
    source = staged(tmp_path)
    with live_server(repo, env=SETTLE) as (url, _), httpx.Client(base_url=url) as client:
        assert index(client) == []
        # The clock starts before the copy, whose last write is later: READY cannot come
        # sooner than settle_ms after this, however long the copy or the test's own
        # scheduling take (timed after the copy, a test preempted there saw less).
        copying = time.monotonic()
        shutil.copytree(source, repo / "m")
        wait_until(lambda: client.get("/v2/models/m/ready").status_code == 200, "m READY")
        took = time.monotonic() - copying
        assert took >= 0.3  # not before the folder had settled for settle_ms
        assert infer(client).status_code == 200

        shutil.rmtree(repo / "m")
        wait_until(lambda: client.get("/v2/models/m").status_code == 404, "m gone")
        assert infer(client).status_code == 404
        assert index(client) == []
        log = server_log(repo)
        assert "model m version 1: READY -> UNLOADING: folder" in log
        assert "model m version 1: UNLOADING -> UNAVAILABLE" in log

        # Atomic publish: the hidden copy is ignored until it is renamed into place...
        shutil.copytree(source, repo / ".m.tmp")
        (repo / ".m.tmp").rename(repo / "m")
        wait_until(lambda: client.get("/v2/models/m/ready").status_code == 200, "m READY again")
        # ...and the renamed folder is watched: a new version inside it is picked up.
        shutil.copytree(repo / "m" / "1", repo / "m" / ".2.tmp")
        (repo / "m" / ".2.tmp").rename(repo / "m" / "2")
        wait_until(lambda: infer(client).json().get("model_version") == "2", "version 2 serving")
    log = server_log(repo)
    # Only the model folder was ever loaded: never the hidden copies.
    assert ".m.tmp" not in log and ".2.tmp" not in log


def test_slow_copy_is_not_loaded_before_it_is_complete(tmp_path: Path, repo: Path) -> None:
    model_file = dense(tmp_path / "model.onnx", layers=8).read_bytes()
    settle = {"CINFER_REPOSITORY__SETTLE_MS": "1000"}
    with live_server(repo, env=settle) as (url, _), httpx.Client(base_url=url) as client:
        folder = repo / "m"
        folder.mkdir()
        (folder / "model.toml").write_text(TOML)
        (folder / "1").mkdir()
        chunks = 15
        step = len(model_file) // chunks + 1
        with open(folder / "1" / "model.onnx", "wb") as f:
            for i in range(chunks):  # about 3 s of writing, never 1 s without a write
                f.write(model_file[i * step : (i + 1) * step])
                f.flush()
                states = {e["state"] for e in entries(client, "m")}
                assert states <= {"UNAVAILABLE"}, f"loading a half-written folder: {states}"
                time.sleep(0.2)  # the writer's pace, not a wait for the server
        wait_until(lambda: client.get("/v2/models/m/ready").status_code == 200, "m READY")
        assert infer(client).status_code == 200
    log = server_log(repo)
    assert log.count("model m version 1: UNKNOWN -> LOADING") == 1, log
    assert "version 1: LOADING -> UNAVAILABLE" not in log


def test_new_version_swaps_in_under_load_without_a_failed_request(
    tmp_path: Path, repo: Path
) -> None:
    source = staged(tmp_path, versions=(1, 2))
    shutil.copytree(source, repo / "m", ignore=shutil.ignore_patterns("2"))
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    ready: Counter[int] = Counter()
    stop = threading.Event()

    def send(url: str) -> None:
        with httpx.Client(base_url=url) as client:
            while not stop.is_set():
                response = infer(client)
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    versions[response.json()["model_version"]] += 1

    def probe(url: str) -> None:
        with httpx.Client(base_url=url) as client:
            while not stop.is_set():
                ready[client.get("/v2/health/ready").status_code] += 1
                time.sleep(0.01)

    with live_server(repo, env=SETTLE) as (url, _), httpx.Client(base_url=url) as client:
        threads = [threading.Thread(target=send, args=(url,)) for _ in range(2)]
        threads.append(threading.Thread(target=probe, args=(url,)))
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: versions["1"] > 20, "requests served by version 1")
            shutil.copytree(source / "2", repo / "m" / "2")
            wait_until(lambda: versions["2"] > 20, "requests served by version 2")
            wait_until(
                lambda: "model m version 1: UNLOADING -> UNAVAILABLE" in server_log(repo),
                "version 1 unloaded",
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert [(e["version"], e["state"]) for e in entries(client, "m")] == [("2", "READY")]
    assert set(statuses) == {200}, statuses
    assert set(ready) == {200}, ready
    log = server_log(repo)
    assert "model m version 1: READY -> UNLOADING: no longer selected" in log
    assert "engines closed" in log


def test_broken_files_keep_the_old_version_serving_until_fixed(tmp_path: Path, repo: Path) -> None:
    shutil.copytree(staged(tmp_path), repo / "m")
    model_file = repo / "m" / "1" / "model.onnx"
    good = model_file.read_bytes()
    with live_server(repo, env=SETTLE) as (url, _), httpx.Client(base_url=url) as client:
        before = infer(client).json()["outputs"][0]["data"]

        def reason() -> str:
            (entry,) = entries(client, "m")
            assert entry["state"] == "READY"
            return entry["reason"]

        # A schema error in model.toml: the reason names file and line; version 1 serves on.
        (repo / "m" / "model.toml").write_text(TOML + 'max_batch_size = "eight"\n')
        wait_until(lambda: "model.toml" in reason(), "the model.toml error in the index")
        assert "reload failed, still serving" in reason()
        assert "line 2" in reason() or "line 3" in reason()
        assert infer(client).json()["outputs"][0]["data"] == before
        metadata = client.get("/v2/models/m").json()
        assert metadata["state"] == "READY" and "model.toml" in metadata["reason"]

        (repo / "m" / "model.toml").write_text(TOML)
        wait_until(lambda: reason() == "", "the reason cleared once model.toml is fixed")

        # A truncated model file: the reload fails, the previous load serves on.
        model_file.write_bytes(good[: len(good) // 2])
        wait_until(lambda: "onnxruntime cannot load" in reason(), "the load error in the index")
        assert str(model_file) in reason()
        assert infer(client).json()["outputs"][0]["data"] == before

        # A good new file in the same version folder: reloaded and swapped in.
        dense(model_file, seed=7)
        wait_until(lambda: reason() == "", "the new file loaded")
        wait_until(lambda: infer(client).json()["outputs"][0]["data"] != before, "new outputs")
    log = server_log(repo)
    assert "model m: reload failed after" in log
    assert "model m version 1: LOADING -> UNAVAILABLE" in log
    assert "model m version 1: READY -> UNLOADING: replaced by a new load" in log


@pytest.mark.anyio
async def test_the_watch_survives_the_repository_folder_going_away(
    repo: Path, tmp_path: Path
) -> None:
    dense_folder(repo, "m", TOML)
    async with running_app(repo, repository_settings()) as (client, dataplane):
        models = dataplane.reconciler.models
        shutil.rmtree(repo)
        await eventually(lambda: "m" not in models, "m unloaded with its folder")
        assert dataplane.ready and (await client.get("/v2/health/ready")).status_code == 200

        stage = tmp_path / "stage"
        dense_folder(stage, "back", TOML)
        stage.rename(repo)
        await eventually(lambda: "back" in models and 1 in models["back"].versions, "reloaded")
        assert models["back"].versions[1].ready
        # And the new folder is watched.
        dense_folder(repo, "more", TOML)
        await eventually(lambda: "more" in models and 1 in models["more"].versions, "watched")


@pytest.mark.anyio
async def test_a_symlinked_repository_is_followed_when_its_target_is_swapped(
    tmp_path: Path,
) -> None:
    # git-sync and ConfigMap volumes publish by pointing a symlink at a new folder, then
    # removing the old one.
    old, new, link = tmp_path / "old", tmp_path / "new", tmp_path / "repository"
    dense_folder(old, "gone", TOML)
    dense_folder(old, "kept", TOML, seed=1)
    link.symlink_to(old)
    async with running_app(link, repository_settings()) as (_, dataplane):
        models = dataplane.reconciler.models
        assert {"gone", "kept"} <= set(models)
        kept = models["kept"].versions[1]
        dense_folder(new, "kept", TOML, seed=2)
        dense_folder(new, "added", TOML)
        swap = tmp_path / "repository.new"
        swap.symlink_to(new)
        swap.replace(link)
        shutil.rmtree(old)
        await eventually(
            lambda: set(models) == {"kept", "added"} and 1 in models["added"].versions,
            "the new target's models",
        )
        await eventually(lambda: models["kept"].versions[1] is not kept, "kept reloaded")
        # And the new target is watched.
        dense_folder(new, "more", TOML)
        await eventually(lambda: "more" in models and 1 in models["more"].versions, "watched")
