"""The gRPC door (issue 16) end to end: a real server with [grpc] on, real clients.

tritonclient.grpc and the KServe SDK's InferenceGRPCClient run in a process of their own per
scenario (tests/live/grpc_clients.py says why); the health service, the mixed HTTP + gRPC
batch and graceful shutdown are driven from here with grpcio and the server's own stubs
(built in a private descriptor pool, so they load beside anything).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from server.grpc.generated import grpc_service_pb2 as pb
from server.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from server.grpc.generated import health_pb2, health_pb2_grpc
from tests import onnx_models
from tests.auth.test_guard import TINY
from tests.live import ROOT, free_port, live_server, server_log, wait_until
from tests.live.grpc_clients import DATATYPES
from tests.live.test_auth import create

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def grpc_env(port: int, **more: str) -> dict[str, str]:
    return {"CINFER_GRPC__ENABLED": "true", "CINFER_GRPC__PORT": str(port), **more}


def client(scenario: str, address: str, url: str, *args: str) -> None:
    """Run a scenario of grpc_clients.py; fail with its output unless every check held."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.live.grpc_clients", scenario, address, url, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert f"{scenario}: ok" in done.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(gRPC address, HTTP URL) of a server over the samples and an identity per datatype."""
    root = tmp_path_factory.mktemp("grpc") / "models"
    root.mkdir()
    onnx_models.copy_samples(root)
    onnx_models.identity_models(root, DATATYPES)
    port = free_port()
    env = grpc_env(port, CINFER_SERVER__MAX_REQUEST_BYTES=str(1024 * 1024))
    with live_server(root, env=env) as (url, _):
        yield f"127.0.0.1:{port}", url


@pytest.mark.parametrize(
    "scenario", ["rpcs", "datatypes", "typed", "shm", "errors", "aio", "kserve"]
)
def test_real_clients(served: tuple[str, str], scenario: str) -> None:
    client(scenario, *served)


def test_health_service_answers_probes(served: tuple[str, str]) -> None:
    """grpc.health.v1 as Kubernetes' gRPC probe calls it: Check, "" and the service's name."""
    address, _ = served
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(20):  # a probe every period: each a fresh call
            for service in ("", "inference.GRPCInferenceService"):
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert answer.status == SERVING
        with pytest.raises(grpc.RpcError) as raised:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert next(watch).status == SERVING
        watch.cancel()


def test_tokens_through_authorization_metadata(tmp_path: Path) -> None:
    root = tmp_path / "models"
    model = onnx_models.dense(tmp_path / "model.onnx")
    for name in ("tiny", "other"):
        onnx_models.model_folder(root, name, TINY, {1: model})
    env = {"CINFER_AUTH__ENABLED": "true", "CINFER_AUTH__DATABASE": str(tmp_path / "c.db")}
    tokens = [
        create(env, "--name", "infer", "--scope", "infer"),
        create(env, "--name", "read", "--scope", "read"),
        create(env, "--name", "limited", "--scope", "infer", "--models", "tiny"),
        create(env, "--name", "slow", "--scope", "infer", "--rate-limit", "1"),
    ]
    port = free_port()
    with live_server(root, env={**env, **grpc_env(port)}) as (url, _):
        client("tokens", f"127.0.0.1:{port}", url, *tokens)

        def logged() -> set[tuple[str, str | None, int, str]]:
            query = ("SELECT t.name, u.model, u.status, u.client FROM usage_log u "
                     "JOIN tokens t ON t.id = u.token_id")  # fmt: skip
            with sqlite3.connect(f"file:{tmp_path / 'c.db'}?mode=ro", uri=True) as conn:
                return set(conn.execute(query).fetchall())

        # the usage log has the gRPC calls as it has REST's: infer, metadata, refusals
        expected = {("infer", "tiny", 200, "127.0.0.1"), ("read", "tiny", 200, "127.0.0.1"),
                    ("read", "tiny", 403, "127.0.0.1"), ("slow", "tiny", 429, "127.0.0.1")}  # fmt: skip
        wait_until(lambda: expected <= logged(), "the gRPC calls in the usage log")


def slow_folder(root: Path, batching: str) -> None:
    onnx_models.dense(root / "slow" / "1" / "model.onnx", width=512, layers=8)
    (root / "slow" / "model.toml").write_text(
        f'engine = "onnxruntime"\nmax_batch_size = 64\n[batching]\n{batching}\n'
    )


def test_http_and_grpc_requests_share_a_batch(tmp_path: Path) -> None:
    """One DataPlane: an HTTP and a gRPC request queued together run as one batch of 2."""
    root = tmp_path / "models"
    slow_folder(root, "max_queue_delay_us = 5000000\npreferred_batch_sizes = [2]")
    port = free_port()
    with live_server(root, env=grpc_env(port)) as (url, _):
        row = np.full((1, 512), 0.01, np.float32)

        async def both() -> tuple[httpx.Response, pb.ModelInferResponse]:
            request = pb.ModelInferRequest(model_name="slow")
            request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 512])
            request.raw_input_contents.append(row.tobytes())
            body = {"inputs": [{"name": "INPUT0", "shape": [1, 512], "datatype": "FP32",
                                "data": row.ravel().tolist()}]}  # fmt: skip
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel, \
                    httpx.AsyncClient(timeout=30) as http:  # fmt: skip
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                return await asyncio.gather(
                    http.post(f"{url}/v2/models/slow/infer", json=body),
                    stub.ModelInfer(request, timeout=30),
                )

        started = time.monotonic()
        over_http, over_grpc = asyncio.run(both())
        assert time.monotonic() - started < 4.5  # dispatched at 2, not after the delay
        assert over_http.status_code == 200, over_http.text
        expected = np.array(over_http.json()["outputs"][0]["data"], np.float32)
        assert np.array_equal(np.frombuffer(over_grpc.raw_output_contents[0], "<f4"), expected)
        stats = httpx.get(f"{url}/v2/models/slow/stats").json()["model_stats"][0]
        assert stats["inference_count"] == 2 and stats["execution_count"] == 1
        assert [b["batch_size"] for b in stats["batch_stats"]] == [2]


def pending(url: str) -> bool:
    """Whether the server has a request of `slow` accepted and not yet answered."""
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("nv_inference_pending_request_count") and 'model="slow"' in line:
            return float(line.rsplit(" ", 1)[1]) > 0
    return False


def test_graceful_shutdown_drains_calls_in_flight(tmp_path: Path) -> None:
    """SIGTERM: health says NOT_SERVING, a call in flight finishes, the process exits."""
    root = tmp_path / "models"
    # One request at a time, each held in the queue for a second: work in flight at SIGTERM.
    slow_folder(root, "max_queue_delay_us = 1500000\npreferred_batch_sizes = [64]")
    port = free_port()
    env = grpc_env(port, CINFER_SERVER__SHUTDOWN_GRACE_S="20")
    with live_server(root, env=env) as (url, proc):
        address = f"127.0.0.1:{port}"

        async def run() -> tuple[pb.ModelInferResponse, int]:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                request = pb.ModelInferRequest(model_name="slow")
                request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 512])
                request.raw_input_contents.append(np.zeros((1, 512), np.float32).tobytes())
                watch = health.Watch(health_pb2.HealthCheckRequest())
                assert (await watch.read()).status == SERVING
                call = asyncio.ensure_future(stub.ModelInfer(request, timeout=30))
                await asyncio.to_thread(wait_until, lambda: pending(url), "the call in flight")
                os.kill(proc.pid, signal.SIGTERM)
                status = (await watch.read()).status
                return await call, status

        answer, status = asyncio.run(run())
        assert status == NOT_SERVING
        assert answer.outputs[0].name == "OUTPUT0"
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM
        assert "Traceback" not in server_log(root)


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "tools/bench.py", "-i", "grpc", "-p", "300", "--max-trials", "3", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_bench_measures_over_grpc(served: tuple[str, str]) -> None:
    address, url = served
    before = httpx.get(f"{url}/v2/models/digits/stats").json()["model_stats"][0]
    done = bench("-m", "digits", "-u", address, "--concurrency-range", "1:4:3", "-b", "2")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["1", "4"]
    assert "raw ModelInfer requests" in done.stderr and "image FP32 [2, 64]" in done.stderr
    after = httpx.get(f"{url}/v2/models/digits/stats").json()["model_stats"][0]
    sent = int(done.stderr.split("sent ")[1].split(" requests")[0].replace(",", ""))
    # every request the bench counted reached the server (and the probe's one before)
    assert after["inference_count"] - before["inference_count"] == 2 * (sent + 1)
    missing = bench("-m", "nope", "-u", address)
    assert missing.returncode == 1
    assert "ModelMetadata of model 'nope'" in missing.stderr and "NOT_FOUND" in missing.stderr


def test_a_taken_grpc_port_stops_start_up(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "server", "--repository", str(root), "--port", "0"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, **grpc_env(port), "CINFER_AUTH__ENABLED": "false",
                 "CINFER_CONSOLE__ENABLED": "false", "CINFER_JOBS__ENABLED": "false"},
        )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert f"cannot listen for gRPC on 127.0.0.1:{port}: the port is taken" in done.stderr
    assert "Traceback" not in done.stderr
