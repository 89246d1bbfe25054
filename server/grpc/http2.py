"""HTTP/2 as gRPC uses it: the connection protocol the gRPC door serves (RFC 9113, and
gRPC's PROTOCOL-HTTP2.md over it), on the event loop like the HTTP/1.1 door.

grpc.aio costs each call about 300 us of the loop's time in its C core, its completion-queue
poller and its per-call objects, six times what a REST request costs (docs/performance.md,
"gRPC"). What a gRPC call needs from HTTP/2 is small: the connection's settings, pings and
flow-control windows, a stream per call whose HEADERS say which method, DATA frames carrying
length-prefixed messages, and a HEADERS frame of trailers with the status. This module is
that and nothing more (no server push, no priorities, cleartext prior-knowledge
connections, as every gRPC client makes without TLS); `calls.py` runs the methods.

Flow control: the server grants each stream `STREAM_WINDOW` and the connection
`CONNECTION_WINDOW`, and gives back what it has read once half is used; what it sends waits
for the client's windows (a large answer to a client with a small window is sent as the
client's WINDOW_UPDATEs come). Header blocks are decoded with `hpack`; the server's own
headers are literals it never indexes, written once at import.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import hpack

log = logging.getLogger("cinfer")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = range(9)
CONTINUATION = 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9

MAX_FRAME = 1 << 20
"""The largest frame the server accepts (SETTINGS_MAX_FRAME_SIZE): a large tensor comes in
few frames."""
STREAM_WINDOW = 1 << 22
CONNECTION_WINDOW = 1 << 24
DEFAULT_WINDOW = 65535
MAX_WINDOW = (1 << 31) - 1

_HEAD = struct.Struct(">BHBBI")
_SETTING = struct.Struct(">HI")
_U32 = struct.Struct(">I")


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One frame: its 9-byte header and `payload`."""
    n = len(payload)
    return _HEAD.pack(n >> 16, n & 0xFFFF, kind, flags, stream) + payload


def _integer(value: int, prefix: int, first: int = 0) -> bytes:
    """An HPACK integer with a `prefix`-bit prefix (RFC 7541, 5.1)."""
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal never added to the client's table (RFC 7541, 6.2.2)."""
    return b"\x00" + _integer(len(name), 7) + name + _integer(len(value), 7) + value


#: ":status: 200" (static index 8) and "content-type: application/grpc" (name index 31).
RESPONSE_HEADERS = b"\x88" + _integer(31, 4) + _integer(16, 7) + b"application/grpc"


class Handler(Protocol):
    """What runs the calls of a connection (calls.py's `Endpoint`)."""

    def open(self, stream: Stream, headers: list[tuple[str, str]]) -> None: ...


class Stream:
    """One call: the request's bytes as they come, what is left to send, its windows."""

    __slots__ = (
        "body", "call", "connection", "ended", "id", "out", "received", "send_window",
        "started", "trailers",
    )  # fmt: skip

    def __init__(self, connection: Connection, stream_id: int, send_window: int) -> None:
        self.connection = connection
        self.id = stream_id
        self.body = bytearray()
        self.call: Any = None
        """calls.py's Call, told of each message and of the request's end."""
        self.ended = False
        self.received = 0
        self.send_window = send_window
        self.started = False
        """Whether the response's headers are sent."""
        self.out = bytearray()
        """DATA waiting for a window."""
        self.trailers: bytes | None = None
        """The trailers' header block, sent once `out` is."""


class Connection(asyncio.Protocol):
    """One client connection: frames in, frames out, a `Stream` per call."""

    def __init__(self, handler: Handler, closed: Callable[[Connection], None]) -> None:
        self.handler = handler
        self._closed = closed
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buffer = bytearray()
        self.preface = False
        self.decoder = hpack.Decoder()
        self.streams: dict[int, Stream] = {}
        self.last_stream = 0
        self.send_window = DEFAULT_WINDOW
        self.peer_window = DEFAULT_WINDOW
        self.peer_frame = 16384
        self.received = 0
        self.blocked: list[Stream] = []
        self.going_away = False
        self.ended = False
        """Our side of the connection is ended (write_eof): what comes is read, not answered."""
        self._headers: tuple[int, int, bytearray] | None = None
        """A header block waiting for its CONTINUATION frames: stream, flags, fragments."""

    # -- the transport ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
        settings = _SETTING.pack(0x4, STREAM_WINDOW) + _SETTING.pack(0x5, MAX_FRAME)
        settings += _SETTING.pack(0x2, 0)  # no server push
        self._write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONNECTION_WINDOW - DEFAULT_WINDOW))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if stream.call is not None:
                stream.call.cancel()
        self._closed(self)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.preface:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(bytes(buffer)):
                    self._fail(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if buffer[: len(PREFACE)] != PREFACE:
                self._fail(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            del buffer[: len(PREFACE)]
            self.preface = True
        at, size = 0, len(buffer)
        view = memoryview(buffer)
        try:
            while size - at >= 9 and self.transport is not None:
                high, low, kind, flags, stream = _HEAD.unpack_from(buffer, at)
                length = high << 16 | low
                if length > MAX_FRAME:
                    self._fail(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                    return
                if size - at < 9 + length:
                    break
                payload = bytes(view[at + 9 : at + 9 + length])
                at += 9 + length
                self._frame(kind, flags, stream & 0x7FFFFFFF, payload)
        finally:
            view.release()
        del buffer[:at]

    # -- frames in --------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._headers is not None and kind != CONTINUATION:
            self._fail(PROTOCOL_ERROR, "a header block without its CONTINUATION")
        elif kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._header_frame(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif kind == PING:
            if not flags & ACK and self.transport is not None:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            stream = self.streams.pop(stream_id, None)
            if stream is not None and stream.call is not None:
                stream.call.cancel()
        elif kind == GOAWAY:
            self.going_away = True
            if not self.streams and self.transport is not None:
                self.transport.close()
        elif kind == PUSH_PROMISE:
            self._fail(PROTOCOL_ERROR, "a client may not push")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 allows

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            self._fail(FRAME_SIZE_ERROR, "a SETTINGS frame of a length not a multiple of 6")
            return
        for at in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, at)
            if key == 0x4:
                if value > MAX_WINDOW:
                    self._fail(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
                    return
                delta, self.peer_window = value - self.peer_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == 0x5:
                self.peer_frame = max(16384, min(value, (1 << 24) - 1))
        assert self.transport is not None
        self._write(frame(SETTINGS, ACK, 0))
        self._unblock()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._fail(FRAME_SIZE_ERROR, "a WINDOW_UPDATE frame not of 4 bytes")
            return
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            self.send_window += increment
        elif (stream := self.streams.get(stream_id)) is not None:
            stream.send_window += increment
        self._unblock()

    def _header_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            self._fail(PROTOCOL_ERROR, "HEADERS on stream 0")
            return
        start, end = 0, len(payload)
        if flags & PADDED:
            start, end = 1, end - payload[0] if payload else -1
        if flags & PRIORITY_FLAG:
            start += 5
        if end < start:
            self._fail(PROTOCOL_ERROR, "a HEADERS frame shorter than its padding")
            return
        fragment = payload[start:end]
        if flags & END_HEADERS:
            self._header_block(flags, stream_id, fragment)
        else:
            self._headers = (stream_id, flags, bytearray(fragment))

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        pending = self._headers
        if pending is None or pending[0] != stream_id:
            self._fail(PROTOCOL_ERROR, "a CONTINUATION frame out of place")
            return
        pending[2].extend(payload)
        if flags & END_HEADERS:
            self._headers = None
            self._header_block(pending[1], stream_id, bytes(pending[2]))

    def _header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        try:
            headers = self.decoder.decode(block)
        except hpack.HPACKError as exc:
            self._fail(COMPRESSION_ERROR, f"a header block that does not decode ({exc})")
            return
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers: the request's end
            if flags & END_STREAM:
                self._end(stream)
            return
        if stream_id <= self.last_stream or not stream_id & 1:
            self._fail(PROTOCOL_ERROR, f"HEADERS opening stream {stream_id}, not a new one")
            return
        self.last_stream = stream_id
        if self.going_away:
            self._reset(stream_id, REFUSED_STREAM)
            return
        stream = self.streams[stream_id] = Stream(self, stream_id, self.peer_window)
        self.handler.open(stream, headers)  # type: ignore[arg-type]
        if flags & END_STREAM and stream_id in self.streams:
            self._end(stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        length = len(payload)
        self.received += length
        if self.received >= CONNECTION_WINDOW // 2 and self.transport is not None:
            self._write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.received)))
            self.received = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.ended:
            return  # a call already answered or reset: its data is dropped, its credit kept
        if flags & PADDED:
            pad = payload[0] if payload else 0
            if pad >= length:
                self._fail(PROTOCOL_ERROR, "a DATA frame shorter than its padding")
                return
            payload = payload[1 : length - pad]
        stream.received += length
        if stream.received >= STREAM_WINDOW // 2 and not flags & END_STREAM:
            assert self.transport is not None
            self._write(frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(stream.received)))
            stream.received = 0
        if payload:
            stream.body += payload
            stream.call.data(stream.body)
        if flags & END_STREAM and stream_id in self.streams:
            self._end(stream)

    def _end(self, stream: Stream) -> None:
        stream.ended = True
        stream.call.end()

    # -- frames out -------------------------------------------------------------------------

    def send(
        self, stream: Stream, messages: Sequence[bytes], trailers: bytes | None = None
    ) -> None:
        """Send `messages` (each already length-prefixed) on `stream`, then `trailers` (a
        header block) to end it; the headers go first, with the first of them."""
        if self.transport is None or self.streams.get(stream.id) is not stream:
            return
        chunks: list[bytes] = []
        if not stream.started:
            stream.started = True
            if trailers is not None and not stream.out and not messages:
                # Trailers-Only: the status in the one header block (gRPC's PROTOCOL-HTTP2)
                self._write(
                    frame(HEADERS, END_HEADERS | END_STREAM, stream.id, RESPONSE_HEADERS + trailers)
                )
                self._close(stream)
                self._gone()
                return
            chunks.append(frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
        for message in messages:
            stream.out += message
        if trailers is not None:
            stream.trailers = trailers
        self._drain(stream, chunks)
        if chunks:
            self._writelines(chunks)
        self._gone()

    def _drain(self, stream: Stream, chunks: list[bytes]) -> None:
        """Move what the windows allow of `stream`'s data into `chunks`, then its trailers."""
        out = stream.out
        while out:
            n = min(len(out), stream.send_window, self.send_window, self.peer_frame)
            if n <= 0:
                if stream not in self.blocked:
                    self.blocked.append(stream)
                return
            chunks.append(frame(DATA, 0, stream.id, bytes(out[:n])))
            del out[:n]
            stream.send_window -= n
            self.send_window -= n
        if stream.trailers is not None:
            chunks.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, stream.trailers))
            self._close(stream)

    def _unblock(self) -> None:
        if not self.blocked or self.transport is None:
            return
        blocked, self.blocked = self.blocked, []
        chunks: list[bytes] = []
        for stream in blocked:
            if self.streams.get(stream.id) is stream:
                self._drain(stream, chunks)
        if chunks:
            self._writelines(chunks)
        self._gone()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.ended:
            self.transport.write(data)

    def _writelines(self, chunks: list[bytes]) -> None:
        if self.transport is not None and not self.ended:
            self.transport.writelines(chunks)

    def _gone(self) -> None:
        if self.going_away and not self.streams:
            self._finish()

    def _close(self, stream: Stream) -> None:
        """The response is sent (or is in the chunks about to be): forget the stream (a
        request still coming is reset). Its sender then calls `_gone`."""
        self.streams.pop(stream.id, None)
        if not stream.ended and self.transport is not None:
            self._write(frame(RST_STREAM, 0, stream.id, _U32.pack(NO_ERROR)))

    def reset(self, stream: Stream, code: int = CANCEL) -> None:
        """End `stream` without an answer (its call was cancelled on our side)."""
        if self.streams.pop(stream.id, None) is not None:
            self._reset(stream.id, code)
            self._gone()

    def _reset(self, stream_id: int, code: int) -> None:
        if self.transport is not None:
            self._write(frame(RST_STREAM, 0, stream_id, _U32.pack(code)))

    def go_away(self) -> None:
        """Shutdown: no new calls (GOAWAY names the last one taken); close once the calls in
        flight are answered."""
        if self.transport is None or self.going_away:
            return
        self.going_away = True
        self._write(frame(GOAWAY, 0, 0, _U32.pack(self.last_stream) + _U32.pack(0)))
        if not self.streams:
            self._finish()

    def _finish(self) -> None:
        """Going away and every call answered: end our side and let the client close. Closing
        the socket ourselves with a frame of the client's unread (a WINDOW_UPDATE, a PING)
        would send a reset, and the client could lose the answers before it."""
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
            self.ended = True
        elif self.transport is not None:
            self.transport.close()

    def _fail(self, code: int, why: str) -> None:
        """A connection error: GOAWAY saying why, and close (RFC 9113, 5.4.1)."""
        log.info("gRPC connection from %s closed: %s", self.peer, why)
        if self.transport is not None:
            goaway = _U32.pack(self.last_stream) + _U32.pack(code) + why.encode()[:256]
            self._write(frame(GOAWAY, 0, 0, goaway))
            self.transport.close()
            self.transport = None  # data_received stops reading frames
