"""`cinfer batch --url` against real servers (tests/live's live_server): the rows an
in-process run gives, through the server's batcher; 503s tried again; a server that goes
away stops the run with its checkpoint, and a rerun resumes; tokens."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from tests.batch import cinfer_batch, identity_rows, lines, rows_of, start
from tests.live import ROOT, free_port, live_server, wait_until
from tests.onnx_models import SAMPLES

ROWS = 2000


@pytest.fixture(scope="module")
def server(models: Path) -> Iterator[str]:
    with live_server(models) as (url, _):
        yield url


def stats(url: str, model: str) -> dict:
    (found,) = httpx.get(f"{url}/v2/models/{model}/stats").json()["model_stats"]
    return found


def test_a_run_on_a_server_gives_the_rows_a_run_in_process_gives(
    server: str, models: Path, tmp_path: Path
) -> None:
    values = identity_rows(37)
    lines = [",".join(map(str, row)) for row in values]
    lines[5] = "5,five,-5"
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    requests = [orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 3],
                                          "data": values[i : i + 2].ravel().tolist()}]})
                for i in range(0, 10, 2)]  # fmt: skip
    requests.insert(2, b'{"inputs": []}')
    (tmp_path / "requests.jsonl").write_bytes(b"\n".join(requests) + b"\n")
    photos = tmp_path / "photos"
    shutil.copytree(SAMPLES / "mnist", photos, ignore=shutil.ignore_patterns("1", "*.toml"))
    before = stats(server, "identity")["inference_count"]
    runs = [  # model, input, options, options of the --url run only
        ("identity", "rows.csv", [], []),
        ("identity", "rows.csv", [], ["--json"]),
        ("identity", "requests.jsonl", [], []),
        ("mnist", "photos", ["--classification", "2"], []),
    ]
    for i, (model, name, options, only) in enumerate(runs):
        # The server's run into Parquet (its types from the server's metadata), this one's
        # into JSONL: the same rows.
        local, remote = tmp_path / f"local{i}.jsonl", tmp_path / f"remote{i}.parquet"
        cinfer_batch(model, str(tmp_path / name), "-o", str(local), "--repository", str(models),
                     *options)  # fmt: skip
        cinfer_batch(model, str(tmp_path / name), "-o", str(remote), "--url", server,
                     "--concurrency", "3", *options, *only)  # fmt: skip
        assert rows_of(remote) == rows_of(local), (model, name, options, only)
    assert "error" in rows_of(tmp_path / "remote3.parquet")[-1]  # labels.txt is not an image
    after = stats(server, "identity")
    assert after["inference_count"] - before == 2 * 36 + 10  # the good rows, each once
    assert {b["batch_size"] for b in after["batch_stats"]} <= {1, 2, 3, 4}  # max_batch_size


def test_503s_from_a_full_queue_are_tried_again_until_every_row_is_answered(
    server: str, tmp_path: Path
) -> None:
    np.save(tmp_path / "rows.npy", np.ones((24, 512), np.float32))
    out = tmp_path / "out.jsonl"
    failed = stats(server, "tight")["inference_stats"]["fail"]["count"]
    cinfer_batch("tight", str(tmp_path / "rows.npy"), "-o", str(out), "--url", server,
                 "--concurrency", "8")  # fmt: skip
    rows = rows_of(out)
    assert [r["index"] for r in rows] == list(range(24)) and all("outputs" in r for r in rows)
    assert stats(server, "tight")["inference_stats"]["fail"]["count"] > failed  # the 503s


def test_a_server_that_goes_away_stops_the_run_and_a_rerun_on_another_resumes(
    models: Path, tmp_path: Path
) -> None:
    np.save(tmp_path / "rows.npy", identity_rows(ROWS))
    out = tmp_path / "out.jsonl"
    argv = ["identity", str(tmp_path / "rows.npy"), "-o", str(out), "--retries", "2",
            "--batch-size", "1"]  # fmt: skip
    with live_server(models) as (url, proc):
        batch = start([*argv, "--url", url], tmp_path / "first.log")
        wait_until(lambda: lines(out) > 0 or batch.poll() is not None, "the first checkpoint")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert batch.wait(timeout=60) == 3
    said = (tmp_path / "first.log").read_text()
    assert "no answer after 3 tries" in said, said
    done = lines(out)
    assert f"run the same command again to resume at row {done:,}" in said
    with live_server(models) as (url, _):
        cinfer_batch(*argv, "--url", url)
    rows = rows_of(out)
    assert [r["index"] for r in rows] == list(range(ROWS))
    assert [r["outputs"]["OUTPUT0"] for r in rows] == identity_rows(ROWS).tolist()


def test_a_token_is_sent_and_a_refused_one_stops_the_run(models: Path, tmp_path: Path) -> None:
    env = {"CINFER_AUTH__ENABLED": "true", "CINFER_AUTH__DATABASE": str(tmp_path / "t.db")}

    def token(*scopes: str) -> str:
        made = subprocess.run(
            [sys.executable, "-m", "server", "tokens", "create", "--name", "_".join(scopes),
             "--scope", ",".join(scopes)],
            cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()

    (tmp_path / "rows.csv").write_text("1,2,3\n4,5,6\n")
    run = ["identity", str(tmp_path / "rows.csv"), "-o", str(tmp_path / "out.jsonl")]
    with live_server(models, env=env) as (url, _):
        result = cinfer_batch(*run, "--url", url, code=3)
        assert "answered 401" in result.stderr
        result = cinfer_batch(*run, "--url", url, "--token", token("infer"), code=3)
        assert "answered 403" in result.stderr and "read" in result.stderr
        cinfer_batch(*run, "--url", url, "--token", token("infer", "read"))
    assert [r["outputs"] for r in rows_of(tmp_path / "out.jsonl")] == [
        {"OUTPUT0": [1.0, 2.0, 3.0]},
        {"OUTPUT0": [4.0, 5.0, 6.0]},
    ]
    result = cinfer_batch(*run, "--url", f"http://127.0.0.1:{free_port()}", "--retries", "1",
                          code=3)  # fmt: skip
    assert "no answer after 2 tries (the last: ConnectError" in result.stderr
