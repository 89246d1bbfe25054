"""Python and scikit-learn models in a real server process, driven by tritonclient: batching
over two worker processes, model code that raises, a worker killed mid-request, a reload of
model.py, a CPU-busy Python model beside an ONNX model, and the iris_sklearn sample."""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_iris
from tritonclient.utils import InferenceServerException

from tests.live import live_server, server_log, wait_until
from tests.onnx_models import SAMPLES, dense_folder

IO = """
[[inputs]]
name = "X"
datatype = "FP32"
shape = [4]
[[outputs]]
name = "Y"
datatype = "FP32"
shape = [4]
[[outputs]]
name = "PID"
datatype = "INT64"
shape = [1]
"""

#: 2x + 1, and the worker's pid per row. A request whose first value is 7 raises; a request
#: whose first value is 5 waits (in predict) until the file `go` exists beside the model,
#: after writing its pid to `started-<pid>`. A worker started while `hold` exists waits for
#: it to go away before it is ready (a restart the test can watch).
GATED = """
import os
import time
from pathlib import Path

import numpy as np


class Gated:
    def __init__(self, folder, parameters):
        self.home = Path(folder).parent
        while (self.home / "hold").exists():
            time.sleep(0.01)

    def predict(self, inputs):
        x = inputs["X"]
        if (x[:, 0] == 7).any():
            raise ValueError(f"seven is not welcome ({int((x[:, 0] == 7).sum())} rows)")
        if (x[:, 0] == 5).any():
            (self.home / f"started-{os.getpid()}").write_text(str(len(x)))
            while not (self.home / "go").exists():
                time.sleep(0.005)
        pid = np.full((len(x), 1), os.getpid(), np.int64)
        return {"Y": 2 * x + 1, "PID": pid}
"""


def write_gated(repo: Path, toml: str, source: str = GATED) -> Path:
    folder = repo / "gated"
    (folder / "1").mkdir(parents=True)
    (folder / "model.toml").write_text(toml + IO)
    (folder / "1" / "model.py").write_text(source)
    return folder


@pytest.fixture
def gated(repo: Path) -> Iterator[tuple[str, Path]]:
    folder = write_gated(
        repo,
        'engine = "python"\nmax_batch_size = 8\ninstances = 2\n'
        "[batching]\nmax_queue_delay_us = 1000\n",
    )
    with live_server(repo) as (url, _):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        wait_until(lambda: client.is_model_ready("gated"), "gated to load")
        client.close()
        yield url, folder


def request(value: float, rows: int = 1) -> list[triton.InferInput]:
    tensor = triton.InferInput("X", [rows, 4], "FP32")
    tensor.set_data_from_numpy(np.full((rows, 4), value, np.float32))
    return [tensor]


def infer(url: str, value: float, rows: int = 1) -> tuple[int, dict[str, Any]]:
    """One request from a thread of its own (tritonclient's pool is gevent's: it sends only
    when the caller blocks on a result)."""
    body = {
        "inputs": [
            {"name": "X", "datatype": "FP32", "shape": [rows, 4], "data": [value] * rows * 4}
        ]
    }
    response = httpx.post(f"{url}/v2/models/gated/infer", json=body, timeout=60)
    return response.status_code, response.json()


def outputs(answer: dict[str, Any]) -> dict[str, list[Any]]:
    return {o["name"]: o["data"] for o in answer["outputs"]}


def hold(
    pool: concurrent.futures.ThreadPoolExecutor, url: str, folder: Path, held: int
) -> concurrent.futures.Future[tuple[int, dict[str, Any]]]:
    """A request that waits in predict, once a worker holds it (one at a time: two sent at
    once would batch into one)."""
    future = pool.submit(infer, url, 5)
    wait_until(lambda: len(started(folder)) == held, f"a worker to hold request {held}")
    return future


def started(folder: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("started-*"))


def test_requests_batch_over_two_worker_processes(gated: tuple[str, Path]) -> None:
    url, folder = gated
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        # Two held requests occupy both workers; the fourteen after them queue up and batch.
        held = [hold(pool, url, folder, 1), hold(pool, url, folder, 2)]
        queued = [pool.submit(infer, url, 10.0 + i, 2) for i in range(14)]
        client = triton.InferenceServerClient(url.removeprefix("http://"))

        wait_until(lambda: _pending(url) == 16, "the server to accept all sixteen")
        (folder / "go").touch()
        answers = [f.result() for f in held + queued]
    assert [status for status, _ in answers] == [200] * 16
    for i, (_, answer) in enumerate(answers[2:]):
        assert outputs(answer)["Y"] == [2.0 * (10 + i) + 1] * 8
    pids = {outputs(a)["PID"][0] for _, a in answers}
    assert pids == set(started(folder)) and os.getpid() not in pids and len(pids) == 2
    stats = client.get_inference_statistics("gated")["model_stats"][0]
    client.close()
    assert stats["inference_count"] == 2 + 14 * 2
    # 28 queued rows with max_batch_size 8: at least 4 executions, far fewer than 14.
    assert 2 + 4 <= stats["execution_count"] < 2 + 14
    assert stats["inference_stats"]["success"]["count"] == 16


def _pending(url: str) -> int:
    """gated's requests accepted and not answered yet, from the Prometheus metrics."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("nv_inference_pending_request_count") and 'model="gated"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    raise AssertionError("no nv_inference_pending_request_count for gated in /metrics")


def test_an_exception_in_predict_is_a_clear_error_and_the_model_serves_on(
    gated: tuple[str, Path], repo: Path
) -> None:
    url, _ = gated
    line = next(i for i, text in enumerate(GATED.splitlines(), 1) if "raise ValueError" in text)
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("gated", request(7, rows=3))
    assert caught.value.status() == "500"
    assert caught.value.message() == (
        "model gated:1: predict raised ValueError: seven is not welcome (3 rows) "
        f"(model.py, line {line})"
    )
    assert client.infer("gated", request(1)).as_numpy("Y").tolist() == [[3.0] * 4]
    client.close()
    log = server_log(repo)
    assert "ValueError: seven is not welcome (3 rows)" in log
    assert f'model.py", line {line}, in predict' in log


def test_a_worker_killed_mid_request_fails_only_its_request(
    gated: tuple[str, Path], repo: Path
) -> None:
    url, folder = gated

    def index() -> dict[str, str]:
        (listed,) = httpx.post(f"{url}/v2/repository/index").json()
        return dict(listed)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pending = [hold(pool, url, folder, 1), hold(pool, url, folder, 2)]
        victim, survivor = started(folder)
        (folder / "hold").touch()  # the restarted worker waits, so its reason can be read
        os.kill(victim, signal.SIGKILL)
        reason = wait_until(lambda: index()["reason"], "the version to say what happened")
        assert re.fullmatch(
            r"model gated:1: the worker of instance [01] was killed by SIGKILL; restarting it",
            reason,
        ), reason
        assert index()["state"] == "READY"  # the other instance still serves
        (folder / "go").touch()
        answers = sorted((f.result() for f in pending), key=lambda a: a[0])
    (ok, answer), (failed, error) = answers
    assert (ok, outputs(answer)["PID"]) == (200, [survivor])
    assert failed == 500
    assert re.fullmatch(
        r"model gated:1: the worker of instance [01] was killed by SIGKILL while running this "
        r"request",
        error["error"],
    ), error
    (folder / "hold").unlink()
    wait_until(lambda: index()["reason"] == "", "the worker to come back")
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    answered = {int(client.infer("gated", request(1)).as_numpy("PID")[0, 0]) for _ in range(8)}
    client.close()
    assert victim not in answered
    assert "was killed by SIGKILL while running a request; restarting it" in server_log(repo)


def test_editing_model_py_reloads_the_model(repo: Path) -> None:
    folder = write_gated(repo, 'engine = "python"\nmax_batch_size = 8\n')
    with live_server(repo) as (url, _):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        wait_until(lambda: client.is_model_ready("gated"), "gated to load")
        assert client.infer("gated", request(1)).as_numpy("Y").tolist() == [[3.0] * 4]
        source = folder / "1" / "model.py"
        source.write_text(GATED.replace("2 * x + 1", "10 * x"))

        def reloaded() -> bool:
            return client.infer("gated", request(1)).as_numpy("Y").tolist() == [[10.0] * 4]

        wait_until(reloaded, "the edited model.py to be served")
        assert "model gated version 1" in server_log(repo)


BUSY = """
import time
from pathlib import Path

import numpy as np


class Busy:
    def __init__(self, folder, parameters):
        self.home = Path(folder).parent

    def predict(self, inputs):
        x = inputs["X"]
        if (x[:, 0] == 5).any():
            (self.home / "spinning").touch()
            spins = 0
            while not (self.home / "go").exists():  # pure Python: holds its GIL throughout
                for _ in range(10_000):
                    spins += 1
        return {"Y": 2 * x + 1, "PID": np.zeros((len(x), 1), np.int64)}
"""


def test_a_cpu_busy_python_model_leaves_an_onnx_model_serving(repo: Path) -> None:
    folder = write_gated(repo, 'engine = "python"\nmax_batch_size = 8\n', BUSY)
    dense_folder(repo, "dense", 'engine = "onnxruntime"\nmax_batch_size = 8\n')
    with live_server(repo) as (url, _):
        client = triton.InferenceServerClient(url.removeprefix("http://"), concurrency=2)
        wait_until(lambda: client.is_model_ready("gated"), "gated to load")
        wait_until(lambda: client.is_model_ready("dense"), "dense to load")
        busy = client.async_infer("gated", request(5))
        wait_until(lambda: (folder / "spinning").exists(), "the python model to spin")
        x = triton.InferInput("INPUT0", [1, 16], "FP32")
        x.set_data_from_numpy(np.ones((1, 16), np.float32))
        for _ in range(200):
            assert client.infer("dense", [x]).as_numpy("OUTPUT0").shape == (1, 16)
        # All 200 were answered while the python model still computes.
        assert not (folder / "go").exists()
        (folder / "go").touch()
        assert busy.get_result().as_numpy("Y").tolist() == [[11.0] * 4]


def test_the_iris_sklearn_sample_answers_like_scikit_learn(repo: Path) -> None:
    shutil.copytree(SAMPLES / "iris_sklearn", repo / "iris_sklearn")
    with live_server(repo) as (url, _):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        wait_until(lambda: client.is_model_ready("iris_sklearn"), "iris_sklearn to load")
        x = load_iris().data.astype(np.float32)[::7]
        features = triton.InferInput("features", list(x.shape), "FP32")
        features.set_data_from_numpy(x)
        result = client.infer("iris_sklearn", [features])
        metadata = client.get_model_metadata("iris_sklearn")
    pipeline = joblib.load(SAMPLES / "iris_sklearn" / "1" / "model.joblib")
    assert result.as_numpy("species").ravel().tolist() == [s.encode() for s in pipeline.predict(x)]
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), pipeline.predict_proba(x), rtol=1e-6
    )
    assert metadata["platform"] == "sklearn"
    assert [o["name"] for o in metadata["outputs"]] == ["species", "probabilities"]
