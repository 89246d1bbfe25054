"""One keep-alive HTTP/1.1 client connection, callback style, for the load loops.

Why not httpx or aiohttp: the load generator shares the machine with the server it measures,
so every microsecond of client CPU is taken from the server. Measured against this server's
`tiny` model at concurrency 8 (docs/performance.md, "bench.py vs wrk"): this protocol on uvloop
costs ~46 us of client CPU per request, aiohttp ~290 us, httpx ~3 ms. The request bytes are
built once and written as they are; a response is parsed only as far as framing needs
(status, Content-Length or chunked, Connection: close), and its body is kept for the error
report only when the status is not 2xx.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

MAX_HEAD = 65536
UNTIL_CLOSE = -2
CHUNKED = -3


class HTTPConnection(asyncio.Protocol):
    """Sends one request at a time; calls `on_response` or `on_failure` when it is over.

    Timings of the last exchange, in perf_counter ns: `sent_at` (before the write),
    `send_ns` (time spent in the write), `first_byte_at`, `done_at`.
    """

    def __init__(
        self,
        on_response: Callable[[HTTPConnection, int, bytes], None],
        on_failure: Callable[[HTTPConnection, str], None],
    ) -> None:
        self.on_response = on_response
        self.on_failure = on_failure
        self.transport: Any = None  # an asyncio or uvloop transport (no common class)
        self.closed = False
        self.busy = False
        self.keep_body = False
        """Pass 2xx bodies to on_response too (the load loops need only error bodies)."""
        self.sent_at = 0
        self.send_ns = 0
        self.first_byte_at = 0
        self.done_at = 0
        self._buffer = bytearray()
        self._status = 0
        self._body_size = -1  # -1: still reading the head
        self._keep_alive = True

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.done_at = perf_counter_ns()  # the last sign of life, for the idle-age check

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.busy:
            return
        if self._body_size == UNTIL_CLOSE:  # the body was framed by the close itself
            self._complete(bytes(self._buffer))
            return
        self.busy = False
        reason = f"connection lost: {exc}" if exc else "connection closed by the server"
        if self._body_size == -1 and not self._buffer:
            reason += " before it answered"
        else:
            reason += " in the middle of a response"
        self.on_failure(self, reason)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self._fail("the server sent data without a request (not HTTP/1.1 keep-alive?)")
            return
        if not self.first_byte_at:
            self.first_byte_at = perf_counter_ns()
        buffer = self._buffer
        buffer += data
        while self._body_size == -1:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._fail(f"response head larger than {MAX_HEAD} bytes")
                return
            if not self._parse_head(bytes(buffer[:end])):
                return
            del buffer[: end + 4]
        size = self._body_size
        if size >= 0:
            if len(buffer) >= size:
                body = bytes(buffer[:size])
                if len(buffer) > size:
                    self._fail("the server sent more bytes than its Content-Length")
                    return
                self._complete(body)
        elif size == CHUNKED:
            try:
                chunked = _dechunk(buffer)
            except ValueError:
                self._fail("bad chunk size in a chunked response")
                return
            if chunked is not None:
                self._complete(chunked)

    # -- requests --------------------------------------------------------------------------

    def send(self, request: bytes) -> None:
        """Write one complete request (head and body); the answer arrives by callback."""
        assert self.transport is not None and not self.busy
        self.busy = True
        self.first_byte_at = 0
        self._body_size = -1
        start = perf_counter_ns()
        self.sent_at = start
        self.transport.write(request)
        self.send_ns = perf_counter_ns() - start

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- parsing ---------------------------------------------------------------------------

    def _parse_head(self, head: bytes) -> bool:
        """Status and framing from the head; False when the connection was failed."""
        line_end = head.find(b"\r\n")
        status_line = head if line_end < 0 else head[:line_end]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self._fail(f"not an HTTP/1.x response: {status_line[:80]!r}")
            return False
        status = int(parts[1])
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            return True
        self._status = status
        lower = head.lower()
        self._keep_alive = b"\r\nconnection: close" not in lower and parts[0] != b"HTTP/1.0"
        at = lower.find(b"\r\ncontent-length:")
        if b"\r\ntransfer-encoding: chunked" in lower:
            self._body_size = CHUNKED
        elif at >= 0:
            start = at + len(b"\r\ncontent-length:")
            end = lower.find(b"\r\n", start)
            value = lower[start:end] if end >= 0 else lower[start:]
            try:
                self._body_size = int(value)
            except ValueError:
                self._fail(f"bad Content-Length in the response: {value!r}")
                return False
        elif status in (204, 304):
            self._body_size = 0
        else:
            self._body_size = UNTIL_CLOSE
            self._keep_alive = False
        return True

    def _complete(self, body: bytes) -> None:
        self.done_at = perf_counter_ns()
        self.busy = False
        self._buffer.clear()
        self._body_size = -1
        status = self._status
        if not self._keep_alive:
            self.close()
        keep = self.keep_body or not 200 <= status < 300
        self.on_response(self, status, body if keep else b"")

    def _fail(self, reason: str) -> None:
        self.busy = False
        self.close()
        self.on_failure(self, reason)


def _dechunk(buffer: bytearray) -> bytes | None:
    """The body of a complete chunked message in `buffer`, or None while it is incomplete."""
    chunks = []
    pos = 0
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buffer[pos:line_end]).split(b";")[0].strip() or b"0", 16)
        pos = line_end + 2
        if size == 0:
            # Trailers (rare) end with an empty line; without them the next two bytes are it.
            end = buffer.find(b"\r\n\r\n", line_end)
            if buffer[pos : pos + 2] == b"\r\n":
                return b"".join(chunks)
            return b"".join(chunks) if end >= 0 else None
        if len(buffer) < pos + size + 2:
            return None
        chunks.append(bytes(buffer[pos : pos + size]))
        pos += size + 2
