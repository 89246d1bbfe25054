"""gRPC calls over http2.py: the method a stream's HEADERS name, run as grpc.aio runs it.

The servicers (service.py, health.py) are grpc.aio servicers, registered through the
generated ``add_*_to_server`` functions into an `Endpoint`, which keeps their method
handlers (request deserializer, behaviour, response serializer, streaming or not). A call's
messages are gRPC's length-prefixed frames (gzip and deflate decompressed when the client
compressed them); its status goes back in the trailers as ``grpc-status`` and a
percent-encoded ``grpc-message``. A servicer sees the part of grpc.aio's ServicerContext
it uses: `CallContext`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import zlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, NoReturn

import grpc

from .http2 import Stream, literal

log = logging.getLogger("cinfer")

OK = literal(b"grpc-status", b"0")
TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
NOT_METADATA = frozenset(
    ("te", "content-type", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding")
)
DECOMPRESS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class Abort(Exception):
    """`CallContext.abort`: the call ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details


def trailers(
    code: grpc.StatusCode, details: str = "", metadata: Iterable[tuple[str, str]] = ()
) -> bytes:
    """The trailers' header block: the status, its message, trailing metadata."""
    block = literal(b"grpc-status", str(code.value[0]).encode())
    if details:
        block += literal(b"grpc-message", percent(details))
    for key, value in metadata:
        block += literal(key.lower().encode(), value.encode())
    return block


def percent(text: str) -> bytes:
    """``grpc-message``'s encoding: UTF-8 with bytes outside printable ASCII and ``%`` as %XX."""
    out = bytearray()
    for byte in text.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def prefixed(message: bytes) -> bytes:
    """A message as gRPC frames it: not compressed, its length, its bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


class CallContext:
    """What a servicer method sees of its call: grpc.aio's ServicerContext, the part used."""

    __slots__ = ("_metadata", "_peer", "trailing")

    def __init__(self, metadata: tuple[tuple[str, str | bytes], ...], peer: str) -> None:
        self._metadata = metadata
        self._peer = peer
        self.trailing: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str]]) -> None:
        self.trailing = tuple(metadata)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[Any] = ()
    ) -> NoReturn:
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        raise Abort(code, details)


class Endpoint:
    """The methods served, and the calls running them (http2.py's `Handler`)."""

    def __init__(self, max_message_bytes: int) -> None:
        self.limit = max_message_bytes
        self.methods: dict[str, grpc.RpcMethodHandler] = {}
        self.calls: set[asyncio.Task[None]] = set()

    # the generated add_*_to_server functions call these two
    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """The registered handlers below are the same methods: nothing to keep."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self.methods[f"/{service}/{name}"] = handler

    def open(self, stream: Stream, headers: list[tuple[str, str]]) -> None:
        path, content_type, encoding, timeout = "", "", "identity", None
        metadata: list[tuple[str, str | bytes]] = []
        for name, value in headers:
            if name[0] == ":":
                if name == ":path":
                    path = value
            elif name == "content-type":
                content_type = value
            elif name == "grpc-encoding":
                encoding = value
            elif name == "grpc-timeout":
                timeout = _timeout(value)
            elif name not in NOT_METADATA:
                metadata.append((name, _binary(value) if name.endswith("-bin") else value))
        connection = stream.connection
        handler = self.methods.get(path)
        if not content_type.startswith("application/grpc"):
            status = trailers(
                grpc.StatusCode.INTERNAL, f"content-type {content_type!r} is not gRPC"
            )
        elif handler is None:
            status = trailers(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {path}")
        else:
            context = CallContext(tuple(metadata), connection.peer)
            stream.call = Call(self, stream, handler, context, encoding, timeout)
            if handler.request_streaming:
                stream.call.start()
            return
        stream.call = Ignored()
        connection.send(stream, (), status)


def _timeout(value: str) -> float | None:
    unit = TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    return int(digits) * unit if unit is not None and digits.isdigit() else None


def _binary(value: str) -> bytes:
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        return value.encode()


class Ignored:
    """The call of a stream already answered (an unknown method): what comes is dropped."""

    def data(self, body: bytearray) -> None:
        body.clear()

    def end(self) -> None:
        pass

    def cancel(self) -> None:
        pass


class Call:
    """One call: its request messages as they come, the method run as a task, the answer."""

    __slots__ = (
        "context", "encoding", "endpoint", "failed", "handler", "messages", "request",
        "stream", "task", "timeout",
    )  # fmt: skip

    def __init__(
        self,
        endpoint: Endpoint,
        stream: Stream,
        handler: grpc.RpcMethodHandler,
        context: CallContext,
        encoding: str,
        timeout: float | None,
    ) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self.handler = handler
        self.context = context
        self.encoding = encoding
        self.timeout = timeout
        self.request: bytes | None = None
        self.messages: asyncio.Queue[bytes | None] | None = (
            asyncio.Queue() if handler.request_streaming else None
        )
        self.task: asyncio.Task[None] | None = None
        self.failed = False

    # -- what the connection tells ----------------------------------------------------------

    def data(self, body: bytearray) -> None:
        """Take every whole message from `body`."""
        limit = self.endpoint.limit
        while len(body) >= 5 and not self.failed:
            size = int.from_bytes(body[1:5], "big")
            if size > limit:
                self._fail(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"Received message larger than max ({size} vs. {limit})",
                )
                return
            if len(body) < 5 + size:
                return
            compressed = body[0]
            message = bytes(body[5 : 5 + size])
            del body[: 5 + size]
            if compressed:
                message = self._decompress(message)
                if self.failed:
                    return
            if self.messages is not None:
                self.messages.put_nowait(message)
            elif self.request is None:
                self.request = message
            else:
                self._fail(grpc.StatusCode.UNIMPLEMENTED, "more than one request message")

    def end(self) -> None:
        """The client has sent all it will."""
        if self.failed:
            return
        if self.messages is not None:
            self.messages.put_nowait(None)
        elif self.request is None:
            self._fail(grpc.StatusCode.UNIMPLEMENTED, "no request message")
        else:
            self.start()

    def cancel(self) -> None:
        """The client reset the stream or went away."""
        self.failed = True
        if self.task is not None:
            self.task.cancel()

    def _decompress(self, message: bytes) -> bytes:
        wbits = DECOMPRESS.get(self.encoding)
        if wbits is None:
            self._fail(
                grpc.StatusCode.UNIMPLEMENTED,
                f"a message compressed with {self.encoding!r} (this server reads gzip, deflate)",
            )
            return b""
        inflater = zlib.decompressobj(wbits)
        try:
            message = inflater.decompress(message, self.endpoint.limit + 1)
        except zlib.error as exc:
            self._fail(
                grpc.StatusCode.INTERNAL, f"a compressed message that does not inflate: {exc}"
            )
            return b""
        if len(message) > self.endpoint.limit or inflater.unconsumed_tail:
            self._fail(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Received message larger than max (over {self.endpoint.limit} bytes inflated)",
            )
            return b""
        return message

    def _fail(self, code: grpc.StatusCode, details: str) -> None:
        self.failed = True
        if self.task is not None:
            self.task.cancel()
        self.stream.connection.send(self.stream, (), trailers(code, details))

    # -- running the method -----------------------------------------------------------------

    def start(self) -> None:
        task = asyncio.get_running_loop().create_task(self._run())
        self.task = task
        calls = self.endpoint.calls
        calls.add(task)
        task.add_done_callback(calls.discard)

    async def _run(self) -> None:
        handler, context = self.handler, self.context
        connection, stream = self.stream.connection, self.stream
        status = OK
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._answer(handler, context)
                if handler.response_streaming:
                    serialize = handler.response_serializer
                    async for message in answer:
                        connection.send(stream, (prefixed(serialize(message)),))
                else:
                    connection.send(stream, (prefixed(handler.response_serializer(answer)),), OK)
                    return
        except Abort as abort:
            status = trailers(abort.code, abort.details, context.trailing)
        except TimeoutError:
            status = trailers(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        except asyncio.CancelledError:
            if not self.failed:  # cancelled on our side (shutdown past its grace)
                connection.reset(stream)
            raise
        except Exception as exc:
            log.error("unhandled error on gRPC %s", stream.id, exc_info=exc)
            status = trailers(grpc.StatusCode.UNKNOWN, "internal server error (see the server log)")
        if context.trailing and status is OK:
            status = trailers(grpc.StatusCode.OK, "", context.trailing)
        connection.send(stream, (), status)

    async def _answer(self, handler: grpc.RpcMethodHandler, context: CallContext) -> Any:
        """The method's answer: a message, or an async iterator of them."""
        deserialize = handler.request_deserializer
        if self.messages is not None:
            requests = self._requests()
            if handler.response_streaming:
                return handler.stream_stream(requests, context)
            return await handler.stream_unary(requests, context)
        try:
            request = deserialize(self.request)
        except Exception as exc:
            why = f"the request message does not parse ({exc})"
            raise Abort(grpc.StatusCode.INTERNAL, why) from exc
        if handler.response_streaming:
            return handler.unary_stream(request, context)
        return await handler.unary_unary(request, context)

    async def _requests(self) -> AsyncIterator[Any]:
        deserialize = self.handler.request_deserializer
        assert self.messages is not None
        while (message := await self.messages.get()) is not None:
            try:
                yield deserialize(message)
            except Exception as exc:
                raise Abort(
                    grpc.StatusCode.INTERNAL, f"a request message does not parse ({exc})"
                ) from exc
