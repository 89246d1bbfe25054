"""Async jobs on a real server and a real database (issue 15): every state a job passes
through, watched over the WebSocket and SSE; the result as the infer URL would have answered
(JSON, tritonclient's binary form, images); cancel and delete; what a bad submission is
told; signed callbacks to a receiver here, retried; finished jobs purged after retention.

The restarts, ``kill -9`` and ownership are in test_jobs_durability.py. Nothing here sleeps a
fixed time: every wait is for a condition.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from onnx import TensorProto, helper, numpy_helper
from websockets.sync.client import connect

from tests import onnx_models
from tests.auth.test_guard import INFER, TINY
from tests.live import live_server, wait_until

HEAVY = 'engine = "onnxruntime"\nmax_batch_size = 256\n'
"""A model whose time per request grows with its rows: `rows` x 400 MFLOP (heavy()): 256 rows, half a second or more."""
FINISHED = {"succeeded", "failed", "canceled"}


def heavy(path: Path, width: int = 2048, layers: int = 48) -> Path:
    """INPUT0 FP32 [batch, 16] -> up to `width`, `layers` x (MatMul + Relu), -> OUTPUT0 [batch,
    16]: a job that takes a while on a small body, longer the more rows it has."""
    rng = np.random.default_rng(0)
    scale = 1 / np.sqrt(width)
    weights = [
        numpy_helper.from_array(rng.standard_normal((16, width)).astype(np.float32), "UP"),
        numpy_helper.from_array(
            (rng.standard_normal((width, width)) * scale).astype(np.float32), "W"
        ),
        numpy_helper.from_array(
            (rng.standard_normal((width, 16)) * scale).astype(np.float32), "DOWN"
        ),
    ]
    nodes, previous = [helper.make_node("MatMul", ["INPUT0", "UP"], ["h"])], "h"
    for i in range(layers):
        nodes += [
            helper.make_node("MatMul", [previous, "W"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [f"r{i}"]),
        ]
        previous = f"r{i}"
    nodes.append(helper.make_node("MatMul", [previous, "DOWN"], ["OUTPUT0"]))
    io = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 16])  # noqa: E731
    graph = helper.make_graph(nodes, "heavy", [io("INPUT0")], [io("OUTPUT0")], weights)
    return onnx_models._save(graph, path)


def rows(n: int) -> dict[str, Any]:
    """A JSON infer body of `n` rows for tiny or heavy."""
    return {
        "inputs": [
            {"name": "INPUT0", "shape": [n, 16], "datatype": "FP32", "data": [0.5] * (16 * n)}
        ]
    }


def repository(tmp: Path) -> Path:
    root = tmp / "models"
    onnx_models.model_folder(
        root, "tiny", TINY, {1: onnx_models.dense(tmp / "built" / "model.onnx")}
    )
    onnx_models.model_folder(
        root, "heavy", HEAVY, {1: heavy(tmp / "built" / "heavy" / "model.onnx")}
    )
    return root


def jobs_env(tmp: Path, **settings: str) -> dict[str, str]:
    """The environment that turns jobs on, with their database in `tmp`."""
    env = {"CINFER_JOBS__ENABLED": "true", "CINFER_JOBS__DATABASE": str(tmp / "db" / "jobs.db")}
    env.update({f"CINFER_JOBS__{key.upper()}": value for key, value in settings.items()})
    return env


class Client:
    """httpx against one server, with a token when there is one."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=self.headers, timeout=30)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def submit(self, model: str = "tiny", body: Any = INFER, **kwargs: Any) -> httpx.Response:
        response = self.http.post(f"/v2/models/{model}/jobs", json=body, **kwargs)
        assert response.status_code < 500, response.text
        return response

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v2/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def finished(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        """The job once it has finished (polled)."""
        return wait_until(
            lambda: (job := self.job(job_id))["state"] in FINISHED and job, f"job {job_id} to finish",
            timeout, 0.05,
        )  # fmt: skip

    def socket(self) -> Any:
        return connect(
            f"ws{self.url.removeprefix('http')}/v2/jobs/events", additional_headers=self.headers
        )


def states(messages: list[dict[str, Any]], job_id: str) -> list[str]:
    return [m["state"] for m in messages if m.get("id") == job_id]


def receive_until_finished(socket: Any, ids: set[str]) -> list[dict[str, Any]]:
    """WebSocket messages until every job of `ids` has finished."""
    messages, done = [], set()
    while done != ids:
        message = json.loads(socket.recv(timeout=60))
        messages.append(message)
        if message.get("state") in FINISHED:
            done.add(message["id"])
    return messages


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    tmp = tmp_path_factory.mktemp("jobs")
    root = repository(tmp)
    shutil.copytree(onnx_models.SAMPLES / "mnist", root / "mnist")
    with (
        live_server(root, env=jobs_env(tmp, inline_bytes="1024")) as (url, _),
        Client(url) as client,
    ):
        yield client


def test_a_job_passes_through_its_states_and_every_watcher_sees_each_change(server: Client) -> None:
    with server.socket() as socket:
        socket.send(orjson.dumps({"subscribe": "all"}).decode())
        first = server.submit("heavy", rows(256))  # long enough for the second to be seen queued
        assert first.status_code == 202, first.text
        assert first.headers["location"] == f"/v2/jobs/{first.json()['id']}"
        second = server.submit("heavy", rows(1)).json()
        assert second["state"] == "queued" and second["attempts"] == 0
        assert set(second["links"]) == {"self", "result", "events"}
        # SSE, opened while the second job waits behind the first: its state now, then each change.
        events = []
        with server.http.stream("GET", second["links"]["events"]) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert [e["state"] for e in events] == ["queued", "running", "succeeded"]
        assert [e["attempts"] for e in events] == [0, 1, 1]
        messages = receive_until_finished(socket, {first.json()["id"], second["id"]})
    for job_id in (first.json()["id"], second["id"]):
        assert states(messages, job_id) == ["queued", "running", "succeeded"]
    done = server.job(second["id"])
    assert done["model_version"] == "1" and done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    result = server.http.get(done["links"]["result"])
    assert result.status_code == 200 and result.headers["content-type"] == "application/json"
    direct = server.http.post("/v2/models/heavy/infer", json=rows(1))
    assert result.json() == direct.json()
    # A late subscriber to a finished job gets its state, once.
    with server.socket() as socket:
        socket.send(orjson.dumps({"subscribe": [second["id"], "0000"]}).decode())
        replies = [json.loads(socket.recv(timeout=30)) for _ in range(2)]
    assert {"error": 'no job "0000"'} in replies
    assert [r["state"] for r in replies if "id" in r] == ["succeeded"]


def test_the_infer_url_with_prefer_respond_async_submits_a_job(server: Client) -> None:
    response = server.http.post(
        "/v2/models/tiny/infer", json=INFER, headers={"Prefer": "respond-async, wait=5"}
    )
    assert response.status_code == 202, response.text
    assert response.headers["preference-applied"] == "respond-async"
    job = server.finished(response.json()["id"])
    assert job["state"] == "succeeded"
    # Without the preference it is the synchronous answer, as before.
    assert server.http.post("/v2/models/tiny/infer", json=INFER).status_code == 200


def test_tritonclient_binary_bodies_get_binary_results(server: Client) -> None:
    tensor = triton.InferInput("INPUT0", [2, 16], "FP32")
    data = np.arange(32, dtype=np.float32).reshape(2, 16) / 32
    tensor.set_data_from_numpy(data, binary_data=True)
    wanted = [triton.InferRequestedOutput("OUTPUT0", binary_data=True)]
    body, header = triton.InferenceServerClient.generate_request_body([tensor], wanted, "job-7")
    response = server.http.post(
        "/v2/models/tiny/versions/1/jobs", content=body,
        headers={"Inference-Header-Content-Length": str(header),
                 "Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert response.status_code == 202, response.text
    job = server.finished(response.json()["id"])
    assert job["state"] == "succeeded" and job["version"] == "1"
    result = server.http.get(job["links"]["result"])
    assert result.headers["content-type"] == "application/octet-stream"
    length = int(result.headers["inference-header-content-length"])
    parsed = triton.InferenceServerClient.parse_response_body(result.content, header_length=length)
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        direct = client.infer("tiny", [tensor], outputs=wanted)
    finally:
        client.close()
    assert parsed.get_response()["id"] == "job-7"
    np.testing.assert_array_equal(parsed.as_numpy("OUTPUT0"), direct.as_numpy("OUTPUT0"))


def test_an_image_job_answers_the_labels_and_a_broken_file_fails_the_job(server: Client) -> None:
    digit = (onnx_models.SAMPLES / "mnist" / "digit-3.png").read_bytes()
    response = server.http.post(
        "/v2/models/mnist/jobs?classification=1", files={"image": ("digit-3.png", digit)}
    )
    assert response.status_code == 202, response.text
    job = server.finished(response.json()["id"])
    labels = server.http.get(job["links"]["result"]).json()["outputs"][0]["data"]
    assert labels[0].endswith(":3:three")
    # Raw image bodies too; a file that is no image passes the form's checks and fails the run.
    broken = server.http.post(
        "/v2/models/mnist/jobs", content=b"not a PNG", headers={"Content-Type": "image/png"}
    )
    assert broken.status_code == 202, broken.text
    failed = server.finished(broken.json()["id"])
    assert failed["state"] == "failed" and "input 'image'" in failed["error"], failed
    answer = server.http.get(failed["links"]["result"])
    assert answer.status_code == 409 and "failed" in answer.json()["error"]


def test_cancel_a_queued_and_a_running_job_then_delete_them(server: Client) -> None:
    running = server.submit("heavy", rows(256)).json()
    queued = server.submit("heavy", rows(256)).json()
    wait_until(lambda: server.job(running["id"])["state"] == "running", "the first job to run")
    assert server.http.get(f"/v2/jobs/{queued['id']}/result").status_code == 409
    for job in (queued, running):
        canceled = server.http.delete(f"/v2/jobs/{job['id']}")
        assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"
        assert server.job(job["id"])["state"] == "canceled"
    assert server.job(running["id"])["attempts"] == 1 and server.job(queued["id"])["attempts"] == 0
    # A second DELETE forgets the finished job, and its stored input.
    for job in (queued, running):
        assert server.http.delete(f"/v2/jobs/{job['id']}").status_code == 200
        assert server.http.get(f"/v2/jobs/{job['id']}").status_code == 404
        assert server.http.delete(f"/v2/jobs/{job['id']}").status_code == 404
    # The model serves on: the canceled run did not hold its instance.
    assert server.finished(server.submit("heavy", rows(1)).json()["id"])["state"] == "succeeded"


def test_the_listing_pages_and_filters(server: Client) -> None:
    ids = [server.submit().json()["id"] for _ in range(5)]
    for job_id in ids:
        server.finished(job_id)
    page = server.http.get("/v2/jobs", params={"model": "tiny", "limit": "3"}).json()
    assert len(page["jobs"]) == 3 and page["next_cursor"] is not None
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:3]  # newest first
    rest = server.http.get(
        "/v2/jobs", params={"model": "tiny", "limit": "2", "cursor": page["next_cursor"]}
    ).json()
    assert [j["id"] for j in rest["jobs"]] == ids[::-1][3:5]
    assert all(j["state"] == "succeeded" for j in page["jobs"] + rest["jobs"])
    assert (
        server.http.get("/v2/jobs", params={"state": "running", "model": "tiny"}).json()["jobs"]
        == []
    )
    for query, message in [
        (
            {"state": "done"},
            'state "done" is not one of queued, running, succeeded, failed, canceled',
        ),
        ({"limit": "0"}, 'limit "0" is not a whole number 1..1000'),
        ({"cursor": "x"}, 'cursor "x" is not one this server gave'),
    ]:
        response = server.http.get("/v2/jobs", params=query)
        assert response.status_code == 400 and response.json() == {"error": message}


@pytest.mark.parametrize(
    ("model", "body", "headers", "status", "error"),
    [
        ("tiny", b'{"inputs": [', {}, 400, "malformed JSON"),
        ("tiny", orjson.dumps(rows(9)), {}, 400, "batch of 9 rows; model 'tiny' takes 1 to 8"),
        ("tiny", orjson.dumps({"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1]}]}),
         {}, 400, "unknown input 'X'"),
        ("tiny", b"{}", {"Inference-Header-Content-Length": "99"}, 400, "does not fit a body of 2 bytes"),
        ("nope", orjson.dumps(INFER), {}, 404, "unknown model 'nope'"),
        ("tiny", orjson.dumps(INFER), {"Callback-URL": "http://example.com/hook"}, 400,
         "callbacks are off on this server"),
        ("mnist", b"--x--", {"Content-Type": "multipart/form-data"}, 400, "without a boundary"),
    ],
)  # fmt: skip
def test_a_bad_submission_is_a_4xx_at_once_not_a_failed_job(
    server: Client, model: str, body: bytes, headers: dict[str, str], status: int, error: str
) -> None:
    response = server.http.post(f"/v2/models/{model}/jobs", content=body, headers=headers)
    assert response.status_code == status and error in response.json()["error"], response.text


def test_unknown_jobs_are_404(server: Client) -> None:
    for method, path in [("GET", "/v2/jobs/abc"), ("GET", "/v2/jobs/abc/result"),
                         ("DELETE", "/v2/jobs/abc"), ("GET", "/v2/jobs/abc/events")]:  # fmt: skip
        response = server.http.request(method, path)
        assert response.status_code == 404 and response.json() == {"error": 'no job "abc"'}


class Receiver:
    """A webhook receiver on a free port: answers 500 to each job's first delivery, 200 after."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        received = self.deliveries

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server calls
                body = self.rfile.read(int(self.headers["content-length"]))
                seen = sum(
                    1
                    for headers, _ in received
                    if headers["cinfer-job"] == self.headers["cinfer-job"]
                )
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(500 if seen == 0 else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_callback_is_signed_and_retried_until_the_receiver_takes_it(tmp_path: Path) -> None:
    receiver = Receiver()
    secret = "s3cret-for-the-test"
    env = jobs_env(tmp_path, callback_hosts=f'["127.0.0.1:{receiver.port}"]',
                   callback_secret=secret, callback_backoff_s="0.2")  # fmt: skip
    try:
        with live_server(repository(tmp_path), env=env) as (url, _), Client(url) as client:
            hook = f"http://127.0.0.1:{receiver.port}/hooks/cinfer"
            by_header = client.submit(headers={"Callback-URL": hook}).json()
            by_query = client.http.post(
                "/v2/models/tiny/jobs", json=INFER, params={"callback_url": hook}
            ).json()
            for job in (by_header, by_query):
                assert job["callback"] == {
                    "url": hook,
                    "status": "pending",
                    "attempts": 0,
                    "error": None,
                }
                done = wait_until(
                    lambda job=job: (
                        (j := client.job(job["id"]))["callback"]["status"] != "pending" and j
                    ),
                    "the callback to be delivered",
                )
                assert done["state"] == "succeeded"
                assert (
                    done["callback"]["status"] == "delivered" and done["callback"]["attempts"] == 2
                )
            # Another host, or another port of the allowed one, is refused at submission.
            for elsewhere in (
                "http://169.254.169.254/latest",
                f"http://127.0.0.1:{receiver.port + 1}/",
            ):
                refused = client.submit(headers={"Callback-URL": elsewhere})
                assert refused.status_code == 400 and "is not allowed" in refused.json()["error"]
            assert "169.254.169.254" in client.submit(
                headers={"Callback-URL": "http://169.254.169.254/x"}).json()["error"]  # fmt: skip
    finally:
        receiver.close()
    assert len(receiver.deliveries) == 4  # two jobs, a refused delivery and a taken one each
    for headers, body in receiver.deliveries:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["cinfer-signature"], expected)
        job = json.loads(body)
        assert job["id"] == headers["cinfer-job"] and job["state"] == "succeeded"


def test_finished_jobs_are_purged_after_the_retention(tmp_path: Path) -> None:
    env = jobs_env(tmp_path, retention_hours="0.0005", inline_bytes="100")  # 1.8 s
    payloads = tmp_path / "db" / "jobs-payloads"
    with live_server(repository(tmp_path), env=env) as (url, _), Client(url) as client:
        job = client.finished(client.submit().json()["id"])
        assert {p.name for p in payloads.iterdir()} >= {f"{job['id']}.input", f"{job['id']}.result"}
        wait_until(lambda: client.http.get(f"/v2/jobs/{job['id']}").status_code == 404,
                   "the finished job to be purged")  # fmt: skip
        assert not any(p.name.startswith(job["id"]) for p in payloads.iterdir())
