"""The gRPC door's HTTP/2 (server/grpc/http2.py, calls.py) against grpcio's client: what a
client's transport does that the RPC tests do not (large messages past every flow-control
window, compression, deadlines, cancellation, many calls on one connection, unknown methods,
bytes that are not HTTP/2)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from server.grpc.generated import grpc_service_pb2 as pb
from server.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from tests import onnx_models
from tests.live import free_port, live_server, server_log
from tests.live.test_grpc import grpc_env, slow_folder

LIMIT = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("h2") / "models"
    onnx_models.identity(root / "echo" / "1" / "model.onnx", "FP32", ["batch", "n"])
    (root / "echo" / "model.toml").write_text('engine = "onnxruntime"\nmax_batch_size = 8\n')
    # each request waits in the queue for 3 s, for deadlines and cancellation
    slow_folder(root, "max_queue_delay_us = 3000000\npreferred_batch_sizes = [64]")
    port = free_port()
    env = grpc_env(port, CINFER_SERVER__MAX_REQUEST_BYTES=str(LIMIT))
    with live_server(root, env=env):
        yield f"127.0.0.1:{port}"
    assert "Traceback" not in server_log(root)


def answer(response: pb.ModelInferResponse) -> np.ndarray:
    shape = tuple(response.outputs[0].shape)
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(shape)


@pytest.fixture(scope="module")
def input_name(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="echo"), timeout=10)
        return str(meta.inputs[0].name)


def echo(values: np.ndarray, name: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name=name, datatype="FP32", shape=list(values.shape))
    request.raw_input_contents.append(values.tobytes())
    return request


def slow_request() -> pb.ModelInferRequest:
    """A request to `slow`, which waits in its queue for 3 s."""
    request = pb.ModelInferRequest(model_name="slow")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 512])
    request.raw_input_contents.append(np.zeros((1, 512), np.float32).tobytes())
    return request


def test_messages_larger_than_every_window_go_both_ways(address: str, input_name: str) -> None:
    """12 MB in and out: past the client's 64 KiB initial windows, our 4 MiB stream window and
    1 MiB frames, so every frame, WINDOW_UPDATE and blocked send is exercised."""
    values = np.random.default_rng(0).random((2, 1_500_000), np.float32)
    options = [("grpc.max_receive_message_length", LIMIT), ("grpc.max_send_message_length", LIMIT)]
    # a client window of 64 KiB all along (no BDP probing): the answer waits for its updates
    options += [("grpc.http2.bdp_probe", 0)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(2):  # the connection's windows after a large call still add up
            got = answer(stub.ModelInfer(echo(values, input_name), timeout=60))
            np.testing.assert_array_equal(got, values)


def test_a_message_over_the_limit_is_resource_exhausted(address: str, input_name: str) -> None:
    values = np.zeros((1, LIMIT // 4 + 16), np.float32)
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(echo(values, input_name), timeout=60)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"vs. {LIMIT}" in str(raised.value.details())
        small = np.ones((1, 4), np.float32)  # the connection goes on
        np.testing.assert_array_equal(answer(stub.ModelInfer(echo(small, input_name))), small)


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_compressed_requests(address: str, input_name: str, compression: grpc.Compression) -> None:
    values = np.arange(40_000, dtype=np.float32).reshape(2, 20_000)
    with grpc.insecure_channel(address, compression=compression) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        np.testing.assert_array_equal(answer(stub.ModelInfer(echo(values, input_name))), values)


def test_deadline_exceeded_then_served(address: str, input_name: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(slow_request(), timeout=0.3)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        small = np.ones((1, 4), np.float32)
        np.testing.assert_array_equal(answer(stub.ModelInfer(echo(small, input_name))), small)


def test_many_calls_on_one_connection_and_a_cancelled_one(address: str, input_name: str) -> None:
    """200 concurrent calls interleaved on one connection each get their own answer; a call
    cancelled by the client meanwhile leaves the others alone."""

    async def run() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            cancelled = stub.ModelInfer(slow_request(), timeout=30)
            rows = [np.full((1, 3 + i % 5), i, np.float32) for i in range(200)]
            calls = [stub.ModelInfer(echo(row, input_name), timeout=30) for row in rows]
            cancelled.cancel()
            for row, response in zip(rows, await asyncio.gather(*calls), strict=True):
                np.testing.assert_array_equal(answer(response), row)
            with pytest.raises(asyncio.CancelledError):
                await cancelled

    asyncio.run(run())


def test_an_unknown_method_is_unimplemented(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/NoSuchRpc")
        with pytest.raises(grpc.RpcError) as raised:
            call(b"", timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "NoSuchRpc" in str(raised.value.details())


def test_bytes_that_are_not_http2_close_only_their_connection(
    address: str, input_name: str
) -> None:
    host, port = address.rsplit(":", 1)
    for junk in (
        b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64,
    ):
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(junk)
            received = b""
            while chunk := raw.recv(65536):  # the server closes: recv answers b"" at the end
                received += chunk
            assert b"\x07\x00\x00\x00\x00\x00" in received  # a GOAWAY frame said why
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        small = np.ones((1, 4), np.float32)
        np.testing.assert_array_equal(answer(stub.ModelInfer(echo(small, input_name))), small)
