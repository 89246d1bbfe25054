"""Graceful shutdown: SIGTERM against a real server process with requests in flight."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
from pathlib import Path

import numpy as np

from tests.live import live_server, server_log, unread_bytes, wait_until
from tests.onnx_models import model_folder, slow


def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path, repo: Path) -> None:
    # About 0.1-0.5 s per request here, one instance: three requests queue behind each other.
    model_folder(
        repo, "slow", 'engine = "onnxruntime"\n', {1: slow(tmp_path / "model.onnx", layers=1024)}
    )
    rows = 128
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "FP32",
                    "shape": [rows, 256],
                    "data": [0.5] * (rows * 256),
                }
            ]
        }
    ).encode()
    env = {"CINFER_SERVER__SHUTDOWN_GRACE_S": "60"}
    with live_server(repo, env=env) as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        connections = []
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request(
                "POST", "/v2/models/slow/infer", body, {"Content-Type": "application/json"}
            )
            connections.append(conn)
        ports = {conn.sock.getsockname()[1] for conn in connections}
        # The server has read every request (nothing left unread on its side): in flight.
        wait_until(lambda: unread_bytes(port, ports) == 0, "the server to read the requests")

        results: list[tuple[int, dict]] = []

        def finish(conn: http.client.HTTPConnection) -> None:
            response = conn.getresponse()
            results.append((response.status, json.loads(response.read())))

        threads = [threading.Thread(target=finish, args=(c,)) for c in connections]
        for thread in threads:
            thread.start()
        proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_until(refused, "the server to stop accepting connections")
        for thread in threads:
            thread.join(timeout=60)
        for conn in connections:
            conn.close()
        returncode = proc.wait(timeout=60)

    assert [status for status, _ in results] == [200, 200, 200], results
    for _, answer in results:
        (output,) = answer["outputs"]
        assert output["shape"] == [rows, 256]
        assert np.isfinite(output["data"]).all()
    # uvicorn re-raises the signal once it has shut down cleanly.
    assert returncode in (0, -signal.SIGTERM)
    log = server_log(repo)
    # The requests were in flight: uvicorn waited for them, then the models were unloaded.
    assert "Waiting for connections to close" in log
    assert log.index("Shutting down") < log.index("model slow version 1: READY -> UNLOADING")
    assert "UNLOADING -> UNAVAILABLE" in log and "Application shutdown complete" in log
