"""/admin/models and /admin/audit on a real server: uploads checked in staging and published,
archives that attack the server refused with the reason and the repository unchanged, model.toml
edits validated with line numbers, publish, unpublish and delete (moved aside), each audited.
Clients: httpx for the admin API, the real tritonclient for inference.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests import onnx_models
from tests.live import ROOT, live_server

ADDER = """description = "A + B and A - B"
engine = "onnxruntime"
max_batch_size = 8
"""
WAIT_S = 60.0


def _token(env: dict[str, str], name: str, *options: str) -> str:
    made = subprocess.run(
        [sys.executable, "-m", "server", "tokens", "create", "--name", name, *options],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    return made.stdout.strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Path]]:
    tmp = tmp_path_factory.mktemp("models-admin")
    models = tmp / "models"
    onnx_models.dense_folder(models, "m", 'engine = "onnxruntime"\nmax_batch_size = 8\n')
    env = {
        "CINFER_AUTH__ENABLED": "true",
        "CINFER_AUTH__DATABASE": str(tmp / "db" / "cinfer.db"),
        "CINFER_REPOSITORY__MAX_UPLOAD_MB": "2",
        "CINFER_REPOSITORY__MAX_UNPACKED_MB": "8",
        "CINFER_REPOSITORY__MAX_UPLOAD_FILES": "50",
    }
    tokens = {
        "admin": _token(env, "admin", "--scope", "admin,read,infer"),
        "only-m": _token(env, "only-m", "--scope", "admin", "--models", "m"),
        "reader": _token(env, "reader", "--scope", "read,infer"),
    }
    with live_server(models, env=env) as (url, _):
        yield url, tokens, models


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _adder_zip(tmp: Path, top: str = "adder", toml: str = ADDER) -> bytes:
    built = onnx_models.add_sub(tmp / "built-adder" / "model.onnx")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{top}/model.toml", toml)
        archive.write(built, f"{top}/1/model.onnx")
    return out.getvalue()


def _tar_gz(
    members: dict[str, bytes], extra: Callable[[tarfile.TarFile], None] | None = None
) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(archive)
    return out.getvalue()


def _zip(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return out.getvalue()


def _snapshot(root: Path) -> list[tuple[str, int, int]]:
    """Every entry under `root`, hidden ones included: (path, size, mtime_ns)."""
    return sorted(
        (str(p.relative_to(root)), p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in root.rglob("*")
    )


def _wait_ready(url: str, token: str, path: str) -> None:
    deadline = time.monotonic() + WAIT_S
    with _client(url, token) as client:
        while client.get(f"{path}/ready").status_code != 200:
            assert time.monotonic() < deadline, f"{path} never became ready"
            time.sleep(0.05)


def _audit(url: str, token: str) -> list[dict[str, object]]:
    with _client(url, token) as client:
        answer = client.get("/admin/audit", params={"limit": 50})
    assert answer.status_code == 200, answer.text
    entries: list[dict[str, object]] = answer.json()["entries"]
    return entries


def test_an_uploaded_model_is_tried_in_staging_published_and_served(
    server: tuple[str, dict[str, str], Path], tmp_path: Path
) -> None:
    url, tokens, models = server
    with _client(url, tokens["admin"]) as client:
        answer = client.post(
            "/admin/models/adder", content=_adder_zip(tmp_path),
            headers={"Content-Type": "application/zip"},
        )  # fmt: skip
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["model"] == "adder" and body["versions"] == [1] and body["served"]
    assert "answered one inference" in body["checked"][0]
    assert "SUM FP32 [1, 4]" in body["checked"][0]
    assert (models / "adder" / "1" / "model.onnx").is_file()
    assert not (models / ".staging").exists()
    _wait_ready(url, tokens["admin"], "/v2/models/adder")

    client = triton.InferenceServerClient(url.removeprefix("http://"))
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    inputs = [triton.InferInput("A", [2, 4], "FP32"), triton.InferInput("B", [2, 4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("adder", inputs, headers={"Authorization": f"Bearer {tokens['admin']}"})
    np.testing.assert_array_equal(result.as_numpy("SUM"), a + b)
    np.testing.assert_array_equal(result.as_numpy("DIFF"), a - b)

    entry = next(e for e in _audit(url, tokens["admin"]) if e["action"] == "model.upload")
    assert entry["actor"] == "token admin" and entry["target"] == "adder"
    assert "answered one inference" in str(entry["detail"])


def test_the_next_version_is_published_beside_the_others(
    server: tuple[str, dict[str, str], Path], tmp_path: Path
) -> None:
    url, tokens, models = server
    built = onnx_models.dense(tmp_path / "v" / "model.onnx", seed=3)
    archive = _tar_gz({"model.onnx": built.read_bytes()})
    with _client(url, tokens["admin"]) as client:
        answer = client.post(
            "/admin/models/m/versions", content=archive,
            headers={"Content-Type": "application/gzip"},
        )  # fmt: skip
        assert answer.status_code == 201, answer.text
        assert answer.json()["versions"] == [2]
        assert (models / "m" / "2" / "model.onnx").read_bytes() == built.read_bytes()
        _wait_ready(url, tokens["admin"], "/v2/models/m/versions/2")
        audit = _audit(url, tokens["admin"])
        assert any(e["action"] == "version.upload" and e["target"] == "m/2" for e in audit)
        # A version archive is one version's files: a model.toml in it is refused.
        refused = client.post(
            "/admin/models/m/versions", content=_tar_gz({"model.toml": b"x", "model.onnx": b""})
        )
        assert refused.status_code == 400
        assert "model.toml belongs to the model" in refused.json()["error"]
        assert not (models / "m" / "3").exists()


def _bomb() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/model.toml", ADDER)
        archive.writestr("bomb/1/model.onnx", bytes(64 << 20))  # 64 MB of zeros, ~64 KB packed
    return out.getvalue()


def _hard_link(archive: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("evil/1/model.onnx")
    info.type = tarfile.LNKTYPE
    info.linkname = "/etc/passwd"
    archive.addfile(info)


def _symlink(archive: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("evil/1/model.onnx")
    info.type = tarfile.SYMTYPE
    info.linkname = "../../../../etc/passwd"
    archive.addfile(info)


ATTACKS = {
    "dot-dot path": (_zip({"evil/model.toml": ADDER.encode(), "../escaped.txt": b"x"}),
                     "leaves the folder ('..' in its path)"),
    "absolute path": (_zip({"evil/model.toml": ADDER.encode(), "/tmp/escaped.txt": b"x"}),
                      "has an absolute path"),
    "zip symlink": (_zip({"evil/model.toml": ADDER.encode()}, {"evil/1/model.onnx": "/etc/passwd"}),
                    "is a link"),
    "tar symlink": (_tar_gz({"evil/model.toml": ADDER.encode()}, _symlink), "is a link"),
    "tar hard link": (_tar_gz({"evil/model.toml": ADDER.encode()}, _hard_link), "is a link"),
    "zip bomb": (_bomb(), "unpacks to more than 8 MB"),
    "too many files": (_zip({f"evil/{i}.txt": b"" for i in range(60)}), "more than 50 files"),
    "broken model.toml": (_zip({"evil/model.toml": b'engine = "onnxruntime"\nmax_batch = 8\n',
                                "evil/1/model.onnx": b"x"}),
                          "evil/model.toml line 2: max_batch: unknown key"),
    "model.toml syntax": (_zip({"evil/model.toml": b'engine = "onnxruntime\n'}),
                          "evil/model.toml: invalid TOML"),
    "model that does not load": (_zip({"evil/model.toml": ADDER.encode(),
                                       "evil/1/model.onnx": b"not an onnx file"}),
                                 "version 1 does not load: onnxruntime cannot load"),
    "no model.toml": (_zip({"evil/1/model.onnx": b"x"}), "this one has no model.toml"),
    "not an archive": (b"just some bytes", "neither a .zip nor a .tar.gz"),
}  # fmt: skip


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_an_archive_that_breaks_a_rule_is_refused_and_the_repository_is_unchanged(
    server: tuple[str, dict[str, str], Path], attack: str
) -> None:
    url, tokens, models = server
    archive, reason = ATTACKS[attack]
    before = _snapshot(models)
    with _client(url, tokens["admin"]) as client:
        answer = client.post("/admin/models/evil", content=archive)
        assert answer.status_code == 400, answer.text
        assert reason in answer.json()["error"]
        assert client.get("/v2/models/evil/ready").status_code == 404
    assert _snapshot(models) == before
    assert not (Path("/tmp") / "escaped.txt").exists()
    refusal = next(e for e in _audit(url, tokens["admin"]) if e["target"] == "evil")
    assert str(refusal["detail"]).startswith("refused: ")


def test_uploads_are_limited_in_size_name_and_rights(
    server: tuple[str, dict[str, str], Path], tmp_path: Path
) -> None:
    url, tokens, models = server
    before = _snapshot(models)
    with _client(url, tokens["admin"]) as client:
        too_big = client.post("/admin/models/big", content=bytes(3 << 20))
        assert too_big.status_code == 413 and "max_upload_mb" in too_big.json()["error"]
        taken = client.post("/admin/models/m", content=_adder_zip(tmp_path))
        assert taken.status_code == 409 and "exists already" in taken.json()["error"]
        bad_name = client.post("/admin/models/.hidden", content=_adder_zip(tmp_path))
        assert bad_name.status_code in (400, 404)
        empty = client.post("/admin/models/empty", content=b"")
        assert empty.status_code == 400 and "empty" in empty.json()["error"]
    with _client(url, tokens["only-m"]) as client:
        assert client.post("/admin/models/other", content=_adder_zip(tmp_path)).status_code == 403
    with _client(url, tokens["reader"]) as client:
        assert client.post("/admin/models/other", content=_adder_zip(tmp_path)).status_code == 403
        assert client.get("/admin/audit").status_code == 403
    assert _snapshot(models) == before


def test_a_model_toml_edit_is_validated_written_and_loaded(
    server: tuple[str, dict[str, str], Path], tmp_path: Path
) -> None:
    url, tokens, models = server
    folder = onnx_models.dense_folder(
        models, "edited", 'engine = "onnxruntime"\nmax_batch_size = 8\n'
    )
    _wait_ready(url, tokens["admin"], "/v2/models/edited")
    path = folder / "model.toml"
    with _client(url, tokens["admin"]) as client:
        current = client.get("/admin/models/edited/config")
        assert current.status_code == 200 and current.text == path.read_text()
        before = path.read_text()
        bad = client.put(
            "/admin/models/edited/config",
            content='engine = "onnxruntime"\nmax_batch_size = 8\ninstances = 0\n',
        )
        assert bad.status_code == 400
        assert "edited/model.toml line 3: instances" in bad.json()["error"]
        assert path.read_text() == before
        good = 'engine = "onnxruntime"  # kept as written\nmax_batch_size = 8\ninstances = 2\n'
        answer = client.put("/admin/models/edited/config", content=good)
        assert answer.status_code == 200, answer.text
        assert answer.json()["changed"] is True and "load_error" not in answer.json()
        assert path.read_text() == good
        config = client.get("/v2/models/edited/config").json()
        assert config["instance_group"][0]["count"] == 2


def test_unpublish_publish_and_delete_move_aside_and_are_audited(
    server: tuple[str, dict[str, str], Path],
) -> None:
    url, tokens, models = server
    onnx_models.dense_folder(models, "doomed", 'engine = "onnxruntime"\nmax_batch_size = 8\n')
    onnx_models.model_folder(models, "doomed", (models / "doomed" / "model.toml").read_text(),
                             {2: models / "doomed" / "1" / "model.onnx"})  # fmt: skip
    _wait_ready(url, tokens["admin"], "/v2/models/doomed/versions/2")
    with _client(url, tokens["admin"]) as client:
        assert client.post("/admin/models/doomed/unpublish").status_code == 200
        assert "enabled = false" in (models / "doomed" / "model.toml").read_text()
        assert client.get("/v2/models/doomed/ready").status_code != 200
        assert client.post("/admin/models/doomed/publish").status_code == 200
        _wait_ready(url, tokens["admin"], "/v2/models/doomed")

        gone = client.delete("/admin/models/doomed/versions/2")
        assert gone.status_code == 200, gone.text
        moved = Path(gone.json()["moved_to"])
        assert moved.is_relative_to(models / ".deleted") and (moved / "model.onnx").is_file()
        assert not (models / "doomed" / "2").exists()
        _wait_ready(url, tokens["admin"], "/v2/models/doomed/versions/1")
        assert client.delete("/admin/models/doomed/versions/7").status_code == 404

        whole = client.delete("/admin/models/doomed")
        assert whole.status_code == 200
        assert (Path(whole.json()["moved_to"]) / "model.toml").is_file()
        assert not (models / "doomed").exists()
        assert client.get("/v2/models/doomed/ready").status_code == 404
        assert client.delete("/admin/models/doomed").status_code == 404
    audit = _audit(url, tokens["admin"])
    deleted = next(e for e in audit if e["action"] == "model.delete")
    assert (
        deleted["target"] == "doomed"
        and str(deleted["detail"]) == f"moved to {whole.json()['moved_to']}"
    )
    actions = [e["action"] for e in audit if str(e["target"]).startswith("doomed")]
    assert {"model.unpublish", "model.publish", "version.delete", "model.delete"} <= set(actions)


def test_the_admin_model_routes_are_in_the_openapi_document(
    server: tuple[str, dict[str, str], Path],
) -> None:
    url, tokens, _ = server
    with _client(url, tokens["admin"]) as client:
        paths = client.get("/openapi.json").json()["paths"]
    upload = paths["/admin/models/{model}"]["post"]
    assert "application/zip" in upload["requestBody"]["content"]
    assert {"201", "400", "409", "413"} <= set(upload["responses"])
    assert (
        "application/toml" in paths["/admin/models/{model}/config"]["put"]["requestBody"]["content"]
    )
    assert {"post"} <= set(paths["/admin/models/{model}/unpublish"])
    assert {"delete"} <= set(paths["/admin/models/{model}/versions/{version}"])
    assert "get" in paths["/admin/audit"]


def test_a_folder_without_model_toml_gets_one_through_the_api(
    server: tuple[str, dict[str, str], Path], tmp_path: Path
) -> None:
    url, tokens, models = server
    built = onnx_models.dense(tmp_path / "bare" / "model.onnx")
    (models / "bare" / "1").mkdir(parents=True)
    (models / "bare" / "1" / "model.onnx").write_bytes(built.read_bytes())
    with _client(url, tokens["admin"]) as client:
        missing = client.get("/admin/models/bare/config")
        assert missing.status_code == 404 and "has no model.toml" in missing.json()["error"]
        answer = client.put(
            "/admin/models/bare/config", content='engine = "onnxruntime"\nmax_batch_size = 4\n'
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["changed"] is True
    assert (models / "bare" / "model.toml").stat().st_mode & 0o777 == 0o644
    _wait_ready(url, tokens["admin"], "/v2/models/bare")
