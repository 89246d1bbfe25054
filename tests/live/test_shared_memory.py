"""Triton's system shared memory extension against the real server, through the real
`tritonclient.utils.shared_memory` and `tritonclient.http`: inputs read from and outputs
written into POSIX shared-memory segments equal the same request sent inline, and every bad
region is a 400 that names it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from tests import onnx_models
from tests.live import live_server

DATATYPES = {"FP32": np.float32, "INT64": np.int64, "FP16": np.float16, "BYTES": np.object_}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("shm") / "models"
    root.mkdir()
    onnx_models.identity_models(root, DATATYPES)
    with live_server(root) as (url, _):
        yield url.removeprefix("http://")


@pytest.fixture
def client(server: str) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(url=server)
    yield c
    c.unregister_system_shared_memory()
    c.close()


@pytest.fixture
def regions() -> Iterator[list[object]]:
    """Segments the test creates (destroyed after it, whatever happened)."""
    made: list[object] = []
    yield made
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def segment(regions: list[object], name: str, size: int) -> object:
    handle = shm.create_shared_memory_region(name, f"/cinfer-test-{os.getpid()}-{name}", size)
    regions.append(handle)
    return handle


def values(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"a", b"", "é✓".encode()], [b"longer one", b"x", b"yz"]], dtype=object)
    return (np.arange(6).reshape(2, 3) * 1.5 - 2).astype(DATATYPES[datatype])


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_tensors_in_shared_memory_give_the_inline_answer(
    datatype: str, client: httpclient.InferenceServerClient, regions: list[object]
) -> None:
    model = f"identity_{datatype.lower()}"
    data = values(datatype)
    # BYTES go in as the binary extension lays them out (4-byte lengths), as tritonclient
    # writes them.
    payload = serialize_byte_tensor(data) if datatype == "BYTES" else data
    size = len(payload.item()) if datatype == "BYTES" else data.nbytes
    key_in = f"/cinfer-test-{os.getpid()}-in"
    handle_in = segment(regions, "in", size + 16)
    handle_out = segment(regions, "out", size + 64)
    shm.set_shared_memory_region(handle_in, [payload], offset=16)
    client.register_system_shared_memory("in", key_in, size + 16)
    client.register_system_shared_memory("out", f"/cinfer-test-{os.getpid()}-out", size + 64)
    status = client.get_system_shared_memory_status()
    assert {(r["name"], r["key"], int(r["byte_size"])) for r in status} == {
        ("in", key_in, size + 16), ("out", f"/cinfer-test-{os.getpid()}-out", size + 64),
    }  # fmt: skip

    sent = httpclient.InferInput("INPUT0", list(data.shape), datatype)
    sent.set_shared_memory("in", size, offset=16)
    wanted = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
    wanted.set_shared_memory("out", size + 64, offset=0)
    result = client.infer(model, [sent], outputs=[wanted])
    answer = result.get_output("OUTPUT0")
    assert answer["parameters"]["shared_memory_region"] == "out"
    assert answer["shape"] == [2, 3] and answer["datatype"] == datatype
    got = shm.get_contents_as_numpy(handle_out, DATATYPES[datatype], [2, 3])

    inline = httpclient.InferInput("INPUT0", list(data.shape), datatype)
    inline.set_data_from_numpy(data)
    expected = client.infer(model, [inline]).as_numpy("OUTPUT0")
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, data)


def test_only_the_region_named_is_unregistered_and_every_one_at_shutdown_of_the_client(
    client: httpclient.InferenceServerClient, regions: list[object]
) -> None:
    for name in ("a", "b"):
        segment(regions, name, 64)
        client.register_system_shared_memory(name, f"/cinfer-test-{os.getpid()}-{name}", 64)
    client.unregister_system_shared_memory("a")
    assert [r["name"] for r in client.get_system_shared_memory_status()] == ["b"]
    with pytest.raises(InferenceServerException, match="region 'a' is not registered"):
        client.get_system_shared_memory_status("a")
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []
    assert "system_shared_memory" in client.get_server_metadata()["extensions"]


def test_every_bad_region_is_a_400_naming_it(
    server: str, client: httpclient.InferenceServerClient, regions: list[object]
) -> None:
    key = f"/cinfer-test-{os.getpid()}-r"
    handle = segment(regions, "r", 24)
    data = values("FP32")  # 24 bytes
    shm.set_shared_memory_region(handle, [data])

    def refused(register: dict[str, object], name: str = "r") -> str:
        answer = httpx.post(f"http://{server}/v2/systemsharedmemory/region/{name}/register",
                            json=register)  # fmt: skip
        assert answer.status_code == 400, answer.text
        return str(answer.json()["error"])

    assert "no shared memory segment '/cinfer-none'" in refused(
        {"key": "/cinfer-none", "byte_size": 8}
    )
    assert "runs past the end of segment" in refused({"key": key, "offset": 8, "byte_size": 24})
    assert "byte_size > 0" in refused({"key": key, "byte_size": 0})
    assert "not a POSIX shared memory name" in refused({"key": "/a/b", "byte_size": 8})
    assert "byte_size" in refused({"key": key})  # a required key missing
    client.register_system_shared_memory("r", key, 24)
    assert "region 'r' is already registered" in refused({"key": key, "byte_size": 24})

    def infer(size: int, offset: int = 0, shape: list[int] | None = None) -> str:
        sent = httpclient.InferInput("INPUT0", shape or [2, 3], "FP32")
        sent.set_shared_memory("r", size, offset=offset)
        with pytest.raises(InferenceServerException) as refusal:
            client.infer("identity_fp32", [sent])
        assert refusal.value.status() == "400"
        return str(refusal.value.message())

    assert "24 bytes at offset 8 do not fit in shared memory region 'r' (24 bytes)" in infer(24, 8)
    assert "input 'INPUT0'" in infer(12)  # 12 bytes for a [2, 3] FP32 tensor
    assert "input 'INPUT0'" in infer(24, shape=[1, 3])

    small = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
    small.set_shared_memory("r", 8)
    sent = httpclient.InferInput("INPUT0", [2, 3], "FP32")
    sent.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException, match="output 'OUTPUT0': 24 bytes do not fit"):
        client.infer("identity_fp32", [sent], outputs=[small])

    client.unregister_system_shared_memory("r")
    gone = httpclient.InferInput("INPUT0", [2, 3], "FP32")
    gone.set_shared_memory("r", 24)
    with pytest.raises(InferenceServerException, match="region 'r' is not registered"):
        client.infer("identity_fp32", [gone])
    cuda = httpx.post(f"http://{server}/v2/cudasharedmemory/region/g/register",
                      json={"raw_handle": {"b64": ""}, "device_id": 0, "byte_size": 8})  # fmt: skip
    assert cuda.status_code == 400
    assert "CUDA shared memory is not supported" in cuda.json()["error"]
    assert httpx.get(f"http://{server}/v2/cudasharedmemory/status").json() == []


def test_a_region_unregistered_while_a_request_reads_it_is_never_read_past(
    server: str, regions: list[object]
) -> None:
    client = httpclient.InferenceServerClient(url=server, concurrency=2)
    key = f"/cinfer-test-{os.getpid()}-race"
    handle = segment(regions, "race", 24)
    shm.set_shared_memory_region(handle, [values("FP32")])
    for _ in range(50):
        client.register_system_shared_memory("race", key, 24)
        sent = httpclient.InferInput("INPUT0", [2, 3], "FP32")
        sent.set_shared_memory("race", 24)
        pending = client.async_infer("identity_fp32", [sent])
        client.unregister_system_shared_memory("race")
        try:
            answer = pending.get_result().as_numpy("OUTPUT0")
        except InferenceServerException as exc:  # read after the unregister: refused
            assert exc.status() == "400" and "region 'race'" in str(exc.message())
        else:  # read before it: the region's bytes, whole
            np.testing.assert_array_equal(answer, values("FP32"))
    assert client.is_server_live()
