"""Real gRPC clients against a live server, one scenario per run, in a process of its own.

tritonclient.grpc and the KServe SDK each register the v2 protocol's messages (package
`inference`) in protobuf's default descriptor pool from different .proto files, so the two
cannot be imported into one process: tests/live/test_grpc.py runs each scenario here with
``python -m tests.live.grpc_clients SCENARIO GRPC_ADDRESS HTTP_URL [ARG...]``. A scenario
returns normally when every check held; a failed check raises (exit status 1, traceback).
"""

from __future__ import annotations

import asyncio
import queue
import sys
from collections.abc import Callable
from typing import Any

import httpx
import ml_dtypes
import numpy as np

SCENARIOS: dict[str, Callable[..., Any]] = {}

#: Identity models' datatypes and a sample array of each (tests/onnx_models.identity_models).
SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 7, 255], [1, 2, 3]], np.uint8),
    "UINT16": np.array([[0, 7, 65535], [1, 2, 3]], np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1], [1, 2, 3]], np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1], [1, 2, 3]], np.uint64),
    "INT8": np.array([[-128, 0, 127], [1, -2, 3]], np.int8),
    "INT16": np.array([[-32768, 0, 32767], [1, -2, 3]], np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [1, -2, 3]], np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [1, -2, 3]], np.int64),
    "FP16": np.array([[0.5, -1.25, 65504], [1, 2, 3]], np.float16),
    "FP32": np.array([[0.5, -1.25, 3.4e38], [1, 2, 3]], np.float32),
    "FP64": np.array([[0.5, -1.25, 1e300], [1, 2, 3]], np.float64),
    "BF16": np.array([[0.5, -1.25, 2.0], [1, 2, 3]], ml_dtypes.bfloat16),
    "BYTES": np.array([[b"a", b"", "\u00e9z".encode()], [b"long" * 50, b"x", b"yz"]], dtype=object),
}
DATATYPES = list(SAMPLES)


def scenario(function: Callable[..., Any]) -> Callable[..., Any]:
    SCENARIOS[function.__name__] = function
    return function


# -- tritonclient.grpc ------------------------------------------------------------------


def triton_error(call: Callable[[], Any]) -> Any:
    from tritonclient.utils import InferenceServerException

    try:
        call()
    except InferenceServerException as exc:
        return exc
    raise AssertionError("the call succeeded")


@scenario
def rpcs(address: str, url: str) -> None:
    """Every RPC tritonclient.grpc has, against the identity and sample models."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    rest = httpx.get(f"{url}/v2").json()
    assert (meta.name, meta.version, list(meta.extensions)) == (
        rest["name"], rest["version"], rest["extensions"],
    )  # fmt: skip
    assert "model_repository" in meta.extensions
    model = client.get_model_metadata("digits", as_json=True)
    rest_model = httpx.get(f"{url}/v2/models/digits").json()
    assert model["name"] == "digits" and model["versions"] == rest_model["versions"]
    assert model["platform"] == rest_model["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in model["inputs"]] == [
        (t["name"], t["datatype"], t["shape"]) for t in rest_model["inputs"]
    ]
    config = client.get_model_config("digits").config
    rest_config = httpx.get(f"{url}/v2/models/digits/config").json()
    assert config.name == "digits" and config.max_batch_size == rest_config["max_batch_size"]
    assert config.platform == "onnxruntime_onnx"
    assert [i.name for i in config.input] == [i["name"] for i in rest_config["input"]]
    assert config.input[0].data_type == grpcclient.model_config_pb2.TYPE_FP32

    images = np.random.default_rng(3).integers(0, 17, (3, 64)).astype(np.float32)
    sent = grpcclient.InferInput("image", [3, 64], "FP32")
    sent.set_data_from_numpy(images)
    wanted = [grpcclient.InferRequestedOutput("label")]
    result = client.infer("digits", [sent], outputs=wanted, request_id="r-1")
    assert result.get_response().id == "r-1"
    assert [o.name for o in result.get_response().outputs] == ["label"]
    body = {"inputs": [{"name": "image", "shape": [3, 64], "datatype": "FP32",
                        "data": images.ravel().tolist()}]}  # fmt: skip
    over_rest = httpx.post(f"{url}/v2/models/digits/infer", json=body).json()
    labels = {o["name"]: o["data"] for o in over_rest["outputs"]}["label"]
    assert result.as_numpy("label").ravel().tolist() == labels
    classes = client.infer(
        "digits", [sent], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=2)]
    ).as_numpy("probabilities")
    assert classes.shape == (3, 2) and b":" in classes[0, 0]

    stats = client.get_inference_statistics("digits", as_json=True)["model_stats"]
    assert int(stats[0]["inference_stats"]["success"]["count"]) >= 2
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in everything} >= {"digits", "iris"}
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "iris", "version": "1", "state": "READY"} in index
    client.unload_model("iris")
    assert not client.is_model_ready("iris")
    client.load_model("iris")
    assert client.is_model_ready("iris")
    error = triton_error(lambda: client.unload_model("nope"))
    assert error.status() == "StatusCode.NOT_FOUND", error
    assert not client.get_cuda_shared_memory_status(as_json=True)  # none is, or can be
    error = triton_error(lambda: client.register_cuda_shared_memory("g", b"", 0, 8))
    assert error.status() == "StatusCode.INVALID_ARGUMENT", error
    assert "CUDA shared memory is not supported" in error.message()

    # ModelStreamInfer: answers in order, a failing request answered and the stream going on
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer("digits", [sent], request_id="s-1")
    client.async_stream_infer("nope", [sent], request_id="s-2")
    client.async_stream_infer("digits", [sent], request_id="s-3")
    got = [answers.get(timeout=30) for _ in range(3)]
    client.stop_stream()
    assert got[0][1] is None and got[0][0].get_response().id == "s-1"
    assert got[1][0] is None and "unknown model 'nope'" in got[1][1].message()
    assert got[2][0].as_numpy("label").ravel().tolist() == labels
    client.close()


@scenario
def datatypes(address: str, url: str) -> None:
    """Each datatype through its identity model, raw as tritonclient sends it."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    for datatype, array in SAMPLES.items():
        sent = grpcclient.InferInput("INPUT0", list(array.shape), datatype)
        sent.set_data_from_numpy(array)
        result = client.infer(f"identity_{datatype.lower()}", [sent])
        response = result.get_response()
        output = response.outputs[0]
        assert (output.name, output.datatype, list(output.shape)) == (
            "OUTPUT0", datatype, list(array.shape),
        ), output  # fmt: skip
        assert len(response.raw_output_contents) == 1, datatype  # asked raw: answered raw
        if datatype == "BF16":
            assert response.raw_output_contents[0] == array.view("<u2").tobytes()
        elif datatype == "BYTES":
            assert result.as_numpy("OUTPUT0").tolist() == array.tolist()
        else:
            got = result.as_numpy("OUTPUT0")
            assert got.dtype == array.dtype and np.array_equal(got, array), (datatype, got)
    client.close()


@scenario
def typed(address: str, url: str) -> None:
    """Typed `contents` in (each datatype's field) and out, and the errors of a wrong one."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    fields = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
              "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
              "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
              "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}  # fmt: skip
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for datatype, field in fields.items():
            array = SAMPLES[datatype]
            request = pb.ModelInferRequest(model_name=f"identity_{datatype.lower()}", id="t")
            tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=array.shape)
            getattr(tensor.contents, field).extend(array.ravel().tolist())
            response = stub.ModelInfer(request)
            assert not response.raw_output_contents, datatype  # asked typed: answered typed
            output = response.outputs[0]
            assert output.datatype == datatype and list(output.shape) == list(array.shape)
            assert list(getattr(output.contents, field)) == array.ravel().tolist(), datatype

        def refused(request: Any) -> Any:
            try:
                stub.ModelInfer(request)
            except grpc.RpcError as exc:
                return exc
            raise AssertionError("accepted")

        request = pb.ModelInferRequest(model_name="identity_fp16")
        request.inputs.add(name="INPUT0", datatype="FP16", shape=[1, 3])
        error = refused(request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "FP16 has no typed contents field" in error.details(), error.details()
        request = pb.ModelInferRequest(model_name="identity_int8")
        tensor = request.inputs.add(name="INPUT0", datatype="INT8", shape=[1, 3])
        tensor.contents.int_contents.extend([1, 2, 300])
        error = refused(request)
        assert "out of range for INT8" in error.details(), error.details()
        request = pb.ModelInferRequest(model_name="identity_fp32")
        tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 3])
        tensor.contents.fp64_contents.extend([1, 2, 3])
        error = refused(request)
        assert "needs 3 values in contents.fp32_contents, got 0" in error.details()
        assert "fp64_contents is set instead" in error.details()
        request = pb.ModelInferRequest(model_name="identity_fp32")
        request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 3])
        request.inputs.add(name="INPUT1", datatype="FP32", shape=[1, 3])
        request.raw_input_contents.append(b"\0" * 12)
        error = refused(request)
        assert "raw_input_contents has 1 buffers for 2 inputs" in error.details()
        request = pb.ModelInferRequest(model_name="identity_fp32")
        tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 3])
        tensor.parameters["shared_memory_region"].string_param = "r"
        tensor.parameters["shared_memory_byte_size"].int64_param = 12
        error = refused(request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input 'INPUT0': shared memory region 'r' is not registered" in error.details()


@scenario
def shm(address: str, url: str) -> None:
    """System shared memory through tritonclient.grpc and tritonclient.utils.shared_memory:
    every datatype's tensor in and out of regions equals the inline answer; a region too
    small for an output is INVALID_ARGUMENT naming it."""
    import os

    import tritonclient.grpc as grpcclient
    import tritonclient.utils.shared_memory as shm
    from tritonclient.utils import serialize_byte_tensor

    client = grpcclient.InferenceServerClient(address)
    prefix = f"/cinfer-grpc-{os.getpid()}"
    handles = [shm.create_shared_memory_region(n, f"{prefix}-{n}", 1024) for n in ("in", "out")]
    try:
        for name in ("in", "out"):
            client.register_system_shared_memory(name, f"{prefix}-{name}", 1024)
        status = client.get_system_shared_memory_status(as_json=True)["regions"]
        assert sorted(status) == ["in", "out"], status
        for datatype in ("FP32", "INT64", "BOOL", "FP16", "BYTES"):
            data = SAMPLES[datatype]
            payload = serialize_byte_tensor(data) if datatype == "BYTES" else data
            size = len(payload.item()) if datatype == "BYTES" else data.nbytes
            shm.set_shared_memory_region(handles[0], [payload], offset=8)
            sent = grpcclient.InferInput("INPUT0", list(data.shape), datatype)
            sent.set_shared_memory("in", size, offset=8)
            wanted = grpcclient.InferRequestedOutput("OUTPUT0")
            wanted.set_shared_memory("out", 1024)
            model = f"identity_{datatype.lower()}"
            result = client.infer(model, [sent], outputs=[wanted]).get_output("OUTPUT0")
            assert result.parameters["shared_memory_region"].string_param == "out"
            written = result.parameters["shared_memory_byte_size"].int64_param
            assert written == size, (datatype, written, size)
            got = shm.get_contents_as_numpy(handles[1], data.dtype, list(data.shape))
            inline = grpcclient.InferInput("INPUT0", list(data.shape), datatype)
            inline.set_data_from_numpy(data)
            expected = client.infer(model, [inline]).as_numpy("OUTPUT0")
            np.testing.assert_array_equal(got, expected)
        small = grpcclient.InferRequestedOutput("OUTPUT0")
        small.set_shared_memory("out", 4)
        inline = grpcclient.InferInput("INPUT0", [2, 3], "FP32")
        inline.set_data_from_numpy(SAMPLES["FP32"])
        error = triton_error(lambda: client.infer("identity_fp32", [inline], outputs=[small]))
        assert error.status() == "StatusCode.INVALID_ARGUMENT", error
        assert "output 'OUTPUT0': 24 bytes do not fit" in error.message()
        client.unregister_system_shared_memory("in")
        assert list(client.get_system_shared_memory_status(as_json=True)["regions"]) == ["out"]
        client.unregister_system_shared_memory()
        assert client.get_system_shared_memory_status(as_json=True) == {}
    finally:
        for handle in handles:
            shm.destroy_shared_memory_region(handle)


@scenario
def errors(address: str, url: str) -> None:
    """Client errors as status codes carrying REST's message for the same request."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)

    def both(model: str, array: np.ndarray, datatype: str, version: str = "") -> tuple[Any, str]:
        sent = grpcclient.InferInput("image", list(array.shape), datatype)
        sent.set_data_from_numpy(array)
        error = triton_error(lambda: client.infer(model, [sent], model_version=version))
        path = f"{url}/v2/models/{model}" + (f"/versions/{version}" if version else "")
        data = array.ravel().tolist()
        body = {"inputs": [{"name": "image", "shape": list(array.shape), "datatype": datatype,
                            "data": data}]}  # fmt: skip
        return error, httpx.post(f"{path}/infer", json=body).json()["error"]

    cases = [
        ("nope", np.zeros((1, 64), np.float32), "FP32", "", "StatusCode.NOT_FOUND"),
        ("digits", np.zeros((1, 64), np.float32), "FP32", "7", "StatusCode.NOT_FOUND"),
        ("digits", np.zeros((1, 63), np.float32), "FP32", "", "StatusCode.INVALID_ARGUMENT"),
        ("digits", np.zeros((1, 64), np.int32), "INT32", "", "StatusCode.INVALID_ARGUMENT"),
    ]
    for model, array, datatype, version, status in cases:
        error, rest = both(model, array, datatype, version)
        assert error.status() == status, (error, status)
        assert error.message() == rest, (error.message(), rest)
    sent = grpcclient.InferInput("image", [1, 64], "FLOAT")
    sent._raw_content = b"\0" * 256
    error = triton_error(lambda: client.infer("digits", [sent]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert 'unknown datatype "FLOAT"' in error.message(), error.message()
    big = grpcclient.InferInput("image", [1, 64], "FP32")
    big.set_data_from_numpy(np.zeros((1, 64), np.float32))
    big._raw_content = b"\0" * (2 * 1024 * 1024)  # over the 1 MiB max_request_bytes
    error = triton_error(lambda: client.infer("digits", [big]))
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED", error
    client.close()


@scenario
def aio(address: str, url: str) -> None:
    """tritonclient.grpc.aio: concurrent infers and the metadata calls."""
    import tritonclient.grpc.aio as aioclient

    async def run() -> None:
        client = aioclient.InferenceServerClient(address)
        assert await client.is_server_ready()
        assert (await client.get_model_metadata("iris", as_json=True))["name"] == "iris"

        async def one(i: int) -> np.ndarray:
            array = np.full((1, 3), i, np.int64)
            sent = aioclient.InferInput("INPUT0", [1, 3], "INT64")
            sent.set_data_from_numpy(array)
            result = await client.infer("identity_int64", [sent], request_id=str(i))
            assert result.get_response().id == str(i)
            return result.as_numpy("OUTPUT0")

        results = await asyncio.gather(*(one(i) for i in range(32)))
        assert [int(r[0, 0]) for r in results] == list(range(32))
        await client.close()

    asyncio.run(run())


@scenario
def tokens(address: str, url: str, infer: str, read: str, limited: str, slow: str) -> None:
    """Tokens in the authorization metadata: the REST rules and messages, as status codes."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    sent = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    sent.set_data_from_numpy(np.full((1, 16), 0.5, np.float32))

    def infer_with(token: str | None, model: str = "tiny") -> Any:
        headers = {"authorization": f"Bearer {token}"} if token else None
        return triton_error(lambda: client.infer(model, [sent], headers=headers))

    def rest(token: str | None, model: str = "tiny") -> str:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                            "data": [0.5] * 16}]}  # fmt: skip
        return str(httpx.post(f"{url}/v2/models/{model}/infer", json=body, headers=headers)
                   .json()["error"])  # fmt: skip

    assert client.infer("tiny", [sent], headers={"authorization": f"Bearer {infer}"})
    assert client.is_server_live()  # the health RPCs need no token
    for token, model, status in [
        (None, "tiny", "StatusCode.UNAUTHENTICATED"),
        ("cinfer_nope", "tiny", "StatusCode.UNAUTHENTICATED"),
        (infer[:-4] + "AAAA", "tiny", "StatusCode.UNAUTHENTICATED"),
        (read, "tiny", "StatusCode.PERMISSION_DENIED"),
        (limited, "other", "StatusCode.PERMISSION_DENIED"),
    ]:
        error = infer_with(token, model)
        assert error.status() == status, (token, error)
        # REST's message, with the call named as gRPC's (ModelInfer tiny, not its URL)
        expected = rest(token, model).replace(
            f"POST /v2/models/{model}/infer", f"ModelInfer {model}"
        )
        assert error.message() == expected, (error.message(), expected)
    error = triton_error(
        lambda: client.infer("tiny", [sent], headers={"authorization": f"Basic {infer}"})
    )
    assert error.status() == "StatusCode.UNAUTHENTICATED"
    assert "must be 'Bearer <token>'" in error.message()
    # metadata needs read; the limited token sees its own model only
    header = {"authorization": f"Bearer {read}"}
    assert client.get_model_metadata("tiny", headers=header).name == "tiny"
    error = triton_error(lambda: client.get_model_metadata("tiny"))
    assert error.status() == "StatusCode.UNAUTHENTICATED"
    error = triton_error(
        lambda: client.get_model_repository_index(headers={"authorization": f"Bearer {infer}"})
    )
    assert error.status() == "StatusCode.PERMISSION_DENIED", error
    # the rate-limited token (1 a minute): the second call is refused with REST's message
    assert client.infer("tiny", [sent], headers={"authorization": f"Bearer {slow}"})
    error = infer_with(slow)
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED", error
    assert "is over its rate limit of 1 requests per minute" in error.message()
    client.close()


# -- the KServe SDK ---------------------------------------------------------------------


@scenario
def kserve(address: str, url: str) -> None:
    """kserve.InferenceGRPCClient: health, readiness, typed and raw inference."""
    from kserve import InferenceGRPCClient, InferInput, InferRequest
    from kserve.protocol.infer_type import RequestedOutput

    async def run() -> None:
        client = InferenceGRPCClient(address, timeout=30)
        assert await client.is_server_live() is True
        assert await client.is_server_ready() is True
        assert await client.is_model_ready("digits") is True
        images = np.random.default_rng(5).integers(0, 17, (3, 64)).astype(np.float32)
        body = {"inputs": [{"name": "image", "shape": [3, 64], "datatype": "FP32",
                            "data": images.ravel().tolist()}]}  # fmt: skip
        over_rest = httpx.post(f"{url}/v2/models/digits/infer", json=body).json()
        expected = {o["name"]: o["data"] for o in over_rest["outputs"]}
        for raw in (False, True):
            sent = InferInput("image", [3, 64], "FP32")
            sent.set_data_from_numpy(images, binary_data=raw)
            request = InferRequest(
                "digits", [sent], request_id=f"k-{raw}",
                request_outputs=[RequestedOutput("probabilities"), RequestedOutput("label")],
            )  # fmt: skip
            response = await client.infer(request)
            assert response.id == f"k-{raw}" and response.model_name == "digits"
            outputs = {o.name: o.as_numpy() for o in response.outputs}
            assert outputs["label"].ravel().tolist() == expected["label"]
            assert np.allclose(outputs["probabilities"].ravel(), expected["probabilities"])
        for datatype in ("INT32", "FP64", "BYTES", "BOOL"):
            array = SAMPLES[datatype]
            sent = InferInput("INPUT0", list(array.shape), datatype)
            sent.set_data_from_numpy(array)
            response = await client.infer(InferRequest(f"identity_{datatype.lower()}", [sent]))
            got = response.outputs[0].as_numpy()
            assert got.tolist() == array.tolist(), (datatype, got)
        await client.close()

    asyncio.run(run())


if __name__ == "__main__":
    name, *arguments = sys.argv[1:]
    SCENARIOS[name](*arguments)
    print(f"{name}: ok")
