"""Declared shapes cannot make the server allocate more than a request's bytes can fill.

A binary infer with a BYTES input declared as [1000000000] and 16 bytes of data once sized an
object array from the shape before checking the body (8 GB from a 134-byte request, a 500 at
[4000000000]). Every datatype, JSON and binary, is refused with a 400 naming the input, and
the real server process's peak resident memory (VmHWM) shows nothing was allocated for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.datatypes import NUMPY
from tests import onnx_models
from tests.live import live_server

DATATYPES = list(NUMPY)
HUGE = [[1_000_000_000, 3], [4_000_000_000, 3], [3, 1_000_000_000, 1_000_000_000]]
GROWTH_LIMIT = 64 * 1024 * 1024
"""Peak memory these requests may add: far below what one of their shapes would take."""


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    root = tmp_path_factory.mktemp("hostile") / "models"
    root.mkdir()
    onnx_models.identity_models(root, DATATYPES)
    with live_server(root) as (url, proc):
        yield url, proc.pid


def binary_request(datatype: str, shape: list[int], data: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + data, headers


def json_request(datatype: str, shape: list[int]) -> bytes:
    data: list[object] = ["abcd"] * 3 if datatype == "BYTES" else [1, 0, 1]
    if datatype == "BOOL":
        data = [True, False, True]
    return json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": datatype, "shape": shape, "data": data}]}
    ).encode()


def test_declared_shapes_allocate_nothing(server: tuple[str, int]) -> None:
    url, pid = server
    with httpx.Client(base_url=url, timeout=60) as client:
        # Warm every path once with a well-formed request, so the peak that follows is the
        # hostile requests' own.
        for datatype in DATATYPES:
            body = json_request(datatype, [1, 3])
            reply = client.post(f"/v2/models/identity_{datatype.lower()}/infer", content=body)
            assert reply.status_code == 200, reply.text
        before = peak_rss(pid)
        for datatype in DATATYPES:
            path = f"/v2/models/identity_{datatype.lower()}/infer"
            for shape in HUGE:
                for data in (b"\x00" * 16, b"\x01\x00\x00\x00a" * 3):
                    body, headers = binary_request(datatype, shape, data)
                    reply = client.post(path, content=body, headers=headers)
                    assert reply.status_code == 400, (datatype, shape, reply.text)
                    assert "input 'INPUT0'" in reply.json()["error"], reply.text
                reply = client.post(path, content=json_request(datatype, shape))
                assert reply.status_code == 400, (datatype, shape, reply.text)
                assert "input 'INPUT0'" in reply.json()["error"], reply.text
        grown = peak_rss(pid) - before
        assert grown < GROWTH_LIMIT, f"peak RSS grew by {grown / 2**20:.0f} MiB"
        assert client.get("/v2/health/ready").status_code == 200


def test_bytes_elements_need_four_bytes_each(server: tuple[str, int]) -> None:
    """The message says what the declared shape needs and what was sent."""
    url, _ = server
    body, headers = binary_request("BYTES", [1_000_000_000, 3], b"\x00" * 16)
    reply = httpx.post(
        f"{url}/v2/models/identity_bytes/infer", content=body, headers=headers, timeout=60
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert "3000000000 BYTES elements need at least 12000000000 bytes" in error, error
    assert "binary_data_size is 16" in error, error
