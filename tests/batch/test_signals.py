"""A real `cinfer batch` process stopped with Ctrl-C (SIGINT), then killed (SIGKILL), then
run to the end: the output holds every row exactly once, in order, each the model's answer."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

from tests import onnx_models
from tests.batch import lines, start
from tests.live import wait_until

ROWS = 8000


def test_interrupted_and_killed_runs_resume_to_every_row_once_in_order(tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    # ~0.3 ms of compute per row here (a small file): seconds for the whole input.
    model = onnx_models.slow(repo / "slow" / "1" / "model.onnx", width=256, layers=128)
    (repo / "slow" / "model.toml").write_text(
        'engine = "onnxruntime"\nmax_batch_size = 2\n[batching]\n'
    )
    values = np.random.default_rng(0).random((ROWS, 256), dtype=np.float32)
    np.save(tmp_path / "rows.npy", values)
    out = tmp_path / "out.jsonl"
    argv = [
        "slow", str(tmp_path / "rows.npy"), "--output", str(out), "--repository", str(repo),
        "--progress-interval", "0.2",
    ]  # fmt: skip

    first = start(argv, tmp_path / "first.log")
    wait_until(lambda: lines(out) > 0 or first.poll() is not None, "the first checkpoint", 60)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=60) == 130, (tmp_path / "first.log").read_text()
    said = (tmp_path / "first.log").read_text()
    assert "SIGINT: finishing the requests in flight and writing them" in said
    assert re.search(r"cinfer batch: \d+%  [\d,]+/8,000 rows", said), said  # progress lines
    stopped = int(re.search(r"resume at row ([\d,]+)", said).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert 0 < stopped < ROWS and lines(out) == stopped
    assert [orjson.loads(line)["index"] for line in out.read_bytes().splitlines()] == list(
        range(stopped)
    )

    second = start(argv, tmp_path / "second.log")
    wait_until(lambda: lines(out) > stopped or second.poll() is not None, "more rows", 60)
    second.kill()
    assert second.wait(timeout=60) == -signal.SIGKILL
    killed = lines(out)  # whole rows; a torn one after them is cut off by the next run

    third = start(argv, tmp_path / "third.log")
    assert third.wait(timeout=120) == 0, (tmp_path / "third.log").read_text()
    said = (tmp_path / "third.log").read_text()
    assert f"resumed after the {killed:,} rows" in said and "holds all 8,000 rows" in said
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [row["index"] for row in rows] == list(range(ROWS))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for index in sorted({0, stopped - 1, stopped, killed - 1, killed, ROWS - 1}):
        (expected,) = session.run(None, {"INPUT0": values[index : index + 1]})
        got = np.array(rows[index]["outputs"][0]["data"], np.float32)
        np.testing.assert_allclose(got, expected.ravel(), rtol=1e-4, atol=0)
