"""`-i grpc`: the same measurement over KServe v2 gRPC (`inference.GRPCInferenceService`).

The model is read with ModelMetadata and ModelConfig, its requests are ModelInferRequests
with every input in `raw_input_contents` (as perf_analyzer and tritonclient send them),
serialised once. The load path sends those bytes through grpc.aio without protobuf on either
side (a generic unary call, bytes in, bytes out), so the client measures the server rather
than its own message building; `probe` parses the answers once to check them.

The messages come from tritonclient.grpc (``pip install tritonclient[grpc]``), imported only
for this mode: any v2 gRPC server (Triton, Cinfer, MLServer, OVMS) speaks them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import traceback
from array import array
from multiprocessing.connection import Connection
from time import perf_counter_ns
from typing import Any

import numpy as np

from .load import DRAIN_S, LATE_NS, Sample
from .target import BenchError, Model, Tensor

INFER = "/inference.GRPCInferenceService/ModelInfer"
MAX_IN_FLIGHT = 1024
"""Requests in flight per worker in request-rate mode (more are delayed)."""
OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def messages() -> Any:
    try:
        from tritonclient.grpc import service_pb2
    except ImportError:
        raise BenchError(
            "-i grpc needs the v2 gRPC messages of tritonclient: pip install 'tritonclient[grpc]'"
        ) from None
    return service_pb2


def metadata(headers: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """-H headers as gRPC metadata (keys lower-case, as HTTP/2 has them)."""
    return tuple((name.lower(), value) for name, value in headers)


def describe(address: str, name: str, version: str | None, headers: list[tuple[str, str]]) -> Model:
    """The model's inputs and max_batch_size, over gRPC; BenchError when unusable."""
    import grpc

    pb = messages()
    what = f"model '{name}'" + (f" version {version}" if version else "")
    with grpc.insecure_channel(address, options=OPTIONS) as channel:
        meta_call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata",
            request_serializer=pb.ModelMetadataRequest.SerializeToString,
            response_deserializer=pb.ModelMetadataResponse.FromString,
        )
        config_call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelConfig",
            request_serializer=pb.ModelConfigRequest.SerializeToString,
            response_deserializer=pb.ModelConfigResponse.FromString,
        )
        try:
            meta = meta_call(
                pb.ModelMetadataRequest(name=name, version=version or ""),
                metadata=metadata(headers), timeout=30,
            )  # fmt: skip
        except grpc.RpcError as exc:
            raise BenchError(
                f"ModelMetadata of {what} at {address}: {exc.code().name}: {exc.details()}"
            ) from None
        max_batch_size = None
        with contextlib.suppress(grpc.RpcError):
            config = config_call(
                pb.ModelConfigRequest(name=name, version=version or ""),
                metadata=metadata(headers), timeout=30,
            )  # fmt: skip
            max_batch_size = int(config.config.max_batch_size)
    inputs = tuple(Tensor(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in meta.inputs)
    if not inputs:
        raise BenchError(f"the metadata of {what} lists no inputs; bench.py needs their shapes")
    outputs = tuple(t.name for t in meta.outputs)
    return Model(name, version, inputs, outputs, max_batch_size)


def raw(datatype: str, value: np.ndarray) -> bytes:
    """A tensor as raw_input_contents has it (BYTES: each element's 4-byte length first)."""
    if datatype == "BYTES":
        parts = []
        for element in value.ravel():
            data = element if isinstance(element, bytes) else str(element).encode()
            parts += [len(data).to_bytes(4, "little"), data]
        return b"".join(parts)
    if datatype == "BF16":
        return (np.ascontiguousarray(value, np.float32).view(np.uint32) >> 16).astype(
            "<u2"
        ).tobytes()  # fmt: skip
    return np.ascontiguousarray(value).tobytes()


def build(model: Model, entries: list[dict[str, np.ndarray]]) -> list[bytes]:
    """One serialised ModelInferRequest per data entry."""
    pb = messages()
    requests = []
    for arrays in entries:
        request = pb.ModelInferRequest(model_name=model.name, model_version=model.version or "")
        for tensor in model.inputs:
            value = arrays[tensor.name]
            request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=value.shape)
            request.raw_input_contents.append(raw(tensor.datatype, value))
        requests.append(request.SerializeToString())
    return requests


async def _probe(address: str, requests: list[bytes], headers: list[tuple[str, str]]) -> None:
    import grpc

    pb = messages()
    async with grpc.aio.insecure_channel(address, options=OPTIONS) as channel:
        call = channel.unary_unary(INFER)
        for request in requests:
            try:
                answer = await call(request, metadata=metadata(headers), timeout=30)
            except grpc.RpcError as exc:
                raise BenchError(
                    f"the server refused the infer request with {exc.code().name}: "  # type: ignore[attr-defined]
                    f"{exc.details()}"  # type: ignore[attr-defined]
                ) from None
            if not pb.ModelInferResponse.FromString(answer).outputs:
                raise BenchError("the server answered ModelInfer without outputs")


def probe(address: str, requests: list[bytes], headers: list[tuple[str, str]]) -> None:
    """Send each request once and check the answer (BenchError says what failed)."""
    asyncio.run(_probe(address, requests, headers))


class GrpcWorker:
    """One load process: the pipe commands of load.Worker, requests over one channel."""

    def __init__(
        self, pipe: Connection, address: str, requests: list[bytes], headers: list[Any]
    ) -> None:
        self.pipe = pipe
        self.address = address
        self.requests = requests
        self.metadata = metadata([tuple(h) for h in headers])  # type: ignore[misc]
        self.next_request = 0
        self.running = False
        self.in_flight = 0
        self.tasks: set[asyncio.Future[None]] = set()
        self._reset()

    def _reset(self) -> None:
        self.latencies: array[int] = array("q")
        self.sent = self.sent_bytes = self.delayed = 0
        self.errors: dict[str, list[Any]] = {}
        self.window_start = perf_counter_ns()
        self.cpu_start = time.process_time()

    def sample(self) -> Sample:
        now = perf_counter_ns()
        sample = Sample(
            duration_ns=now - self.window_start, latencies_ns=self.latencies,
            errors=self.errors, cpu_s=time.process_time() - self.cpu_start, sent=self.sent,
            sent_bytes=self.sent_bytes, delayed=self.delayed,
        )  # fmt: skip
        self._reset()
        self.window_start = now
        return sample

    async def serve(self) -> None:
        import grpc

        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        loop.add_reader(self.pipe.fileno(), lambda: commands.put_nowait(self.pipe.recv()))
        async with grpc.aio.insecure_channel(self.address, options=OPTIONS) as channel:
            self.call = channel.unary_unary(INFER)
            self.rpc_error = grpc.RpcError
            self.pipe.send(("ready",))
            level: asyncio.Task[None] | None = None
            while True:
                command = await commands.get()
                if command[0] == "start":
                    self.running = True
                    self._reset()
                    if command[1] == "concurrency":
                        level = asyncio.create_task(self._concurrency(int(command[2])))
                    elif command[2] > 0:
                        level = asyncio.create_task(self._rate(float(command[2])))
                    self.pipe.send(("started",))
                elif command[0] == "sample":
                    if level is not None and level.done() and not level.cancelled():
                        failure = level.exception()
                        if failure is not None:
                            text = "".join(traceback.format_exception(failure))
                            self.pipe.send(("failed", text))
                            continue
                    self.pipe.send(("sample", self.sample()))
                elif command[0] == "stop":
                    # Each loop ends after its request in flight: the next level starts clean
                    # and every request sent is counted (answered or failed).
                    self.running = False
                    if level is not None:
                        await asyncio.wait([level], timeout=DRAIN_S)
                    if self.tasks:
                        await asyncio.wait(list(self.tasks), timeout=DRAIN_S)
                    self.pipe.send(("stopped", self.sample()))
                elif command[0] == "exit":
                    return

    async def _one(self) -> None:
        index = self.next_request
        self.next_request = (index + 1) % len(self.requests)
        request = self.requests[index]
        self.sent += 1
        self.sent_bytes += len(request)
        self.in_flight += 1
        start = perf_counter_ns()
        try:
            await self.call(request, metadata=self.metadata)
        except self.rpc_error as exc:
            key = f"gRPC {exc.code().name}"
            entry = self.errors.get(key)
            if entry is None:
                self.errors[key] = [1, exc.details()]
            else:
                entry[0] += 1
        else:
            self.latencies.append(perf_counter_ns() - start)
        finally:
            self.in_flight -= 1

    async def _loop(self) -> None:
        while self.running:
            await self._one()

    async def _concurrency(self, count: int) -> None:
        loops = [asyncio.ensure_future(self._loop()) for _ in range(count)]
        self.tasks.update(loops)
        try:
            await asyncio.gather(*loops)
        finally:
            self.tasks.difference_update(loops)

    async def _rate(self, rate: float) -> None:
        interval = 1e9 / rate
        start = perf_counter_ns()
        due = 0
        while self.running:
            now = perf_counter_ns()
            while start + due * interval <= now:
                late = now - (start + due * interval) > LATE_NS
                due += 1
                if self.in_flight >= MAX_IN_FLIGHT:
                    self.delayed += 1
                    continue
                self.delayed += late
                task = asyncio.ensure_future(self._one())
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            await asyncio.sleep(max(start + due * interval - perf_counter_ns(), 0) / 1e9)


def grpc_worker_main(
    pipe: Connection, address: str, requests: list[bytes], headers: list[Any]
) -> None:
    """Entry point of a gRPC load process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    asyncio.run(GrpcWorker(pipe, address, requests, headers).serve())
