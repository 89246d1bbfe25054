"""The transport's connection policy: what a connection may cost before the app sees a request.

uvicorn's httptools protocol reads a request's head (request line and headers) into memory
however long it is, holds a connection that never sends a byte for ever, and loses its
keep-alive timer on any stray byte (issue 12, findings 5 and 9). `HTTPProtocol` is that
protocol with limits from ``[server]``:

    max_header_bytes   the head's bytes, counted as they arrive: past the limit with the head
                       unfinished, 431 and close, without reading the rest
    max_headers        header lines in one head: more, 431 and close
    header_timeout_s   a new connection, and a request whose first bytes have arrived, must
                       finish the head within this: 408 and close (a connection that sent
                       nothing is closed without an answer, as nginx does)
    max_connections    connections open at once (HTTP and WebSocket): one opened past it
                       is answered 503 at its first request and closed; those opened before
                       it are served as usual

Idle keep-alive connections are uvicorn's own timer (``[server] keep_alive_s``). Requests in
flight are bounded by max_connections too: a connection runs one request at a time (uvicorn
queues pipelined ones and stops reading meanwhile). uvicorn's `limit_concurrency` is not
used: it counts the asking connection as well, and once the limit is reached it answers 503
on every connection, the ones it was already serving included.

Responses leave in one send() (`ResponseWriter`): uvicorn writes a response's head and body
separately, two system calls and two packets for every answer; the head now waits for the
body's first bytes within the same turn of the loop (docs/performance.md, "One send per
response").

The hot path: the body of a request whose head is in costs a flag check per read; a head
that arrives in one read (every real client's) costs a few comparisons and no timer. In all
about 0.9 us a request (uvloop, one kept-alive connection, in-process), less than uvicorn's
proxy-headers middleware cost, which `cinfer serve` no longer runs (1.2 us). The counting is
per read (64-256 KiB), so a head may pass the limit by less than one read before it is
refused. Only the httptools implementation is covered; were uvicorn's h11 one used,
`h11_max_incomplete_event_size` (which `cinfer serve` sets to max_header_bytes) would cap the
head's bytes, but not its header count, and nothing would time it.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from asyncio import TimerHandle
from typing import Any, ClassVar

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from ..settings import ServerSettings
from .asgi import JSON, Receive, Scope, Send, send_error

log = logging.getLogger("cinfer")

LOG_EVERY_S = 10.0
"""Refused connections are logged at most once per this many seconds (with a count of those
not logged): a flood of them must not become a flood of log lines."""


class ResponseWriter:
    """The connection's transport as a response sees it: the head (status line and headers)
    waits for the body's first bytes, so that both leave in one send() instead of two.

    uvicorn writes the head on ``http.response.start`` and the body on the next message;
    each write is a system call that delivers a packet. A head whose body does not follow
    in the same turn of the loop (a stream that waits for its first event) is sent alone at
    the next turn, so nothing waits for a body that is slow to come."""

    __slots__ = ("_head", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.writelines((head, data))
        elif data[:9] == b"HTTP/1.1 " and data[9:10] != b"1":  # a head, not 100 Continue
            self._head = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class Refusal:
    """An answer given instead of the app's, ``{"error": message}``, after which the
    connection is closed: as an ASGI app (once the head is parsed) or as raw bytes (while
    it is not)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.message = message
        self.headers = {**(headers or {}), "connection": "close"}
        body = orjson.dumps({"error": message})
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
        head += [f"content-type: {JSON.decode()}", f"content-length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in self.headers.items()]
        self.response = "\r\n".join([*head, "", ""]).encode("latin-1") + body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_error(send, self.status, self.message, self.headers)


class ConnectionPolicy:
    """The limits of `HTTPProtocol` (module docstring) and the answers that enforce them."""

    def __init__(self, settings: ServerSettings) -> None:
        self.max_header_bytes = settings.max_header_bytes
        self.max_headers = settings.max_headers
        self.header_timeout_s = settings.header_timeout_s
        self.max_connections = settings.max_connections
        self.too_long = Refusal(
            431, f"request headers exceed max_header_bytes ({self.max_header_bytes} bytes)"
        )
        self.too_many = Refusal(431, f"more than max_headers ({self.max_headers}) request headers")
        self.too_slow = Refusal(
            408,
            f"request headers not received within header_timeout_s ({self.header_timeout_s:g} s)",
        )
        self.too_busy = Refusal(
            503,
            f"the server has max_connections ({self.max_connections}) connections open",
            {"retry-after": "1"},
        )
        self._quiet_until = 0.0
        self._unlogged = 0

    def report(self, level: int, peer: str, refusal: Refusal) -> None:
        """Log a refused connection, or count it when one was logged in the last LOG_EVERY_S."""
        now = time.monotonic()
        if now < self._quiet_until:
            self._unlogged += 1
            return
        if self._unlogged:
            log.warning(
                "%d more connections refused in the last %g s (not logged one by one)",
                self._unlogged,
                LOG_EVERY_S,
            )
            self._unlogged = 0
        self._quiet_until = now + LOG_EVERY_S
        log.log(level, "%s: %s", peer, refusal.message)


class HTTPProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under a `ConnectionPolicy`; `bind` makes the class that
    uvicorn is given (``uvicorn.Config(http=...)``), one instance per connection."""

    policy: ClassVar[ConnectionPolicy]

    @classmethod
    def bind(cls, policy: ConnectionPolicy) -> type[HTTPProtocol]:
        bound: type[HTTPProtocol] = type(cls.__name__, (cls,), {"policy": policy})
        return bound

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.in_body = False
        """The current request's head is in: what arrives is its body, nothing to count."""
        self.head_pending = False
        """A request has begun and its head is not complete."""
        self.received = 0
        """Bytes read since the last complete head: the next head's, within one read."""
        self.header_timer: TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.writer = ResponseWriter(transport, self.loop)
        policy = self.policy
        if len(self.connections) > policy.max_connections:  # this one included
            self.app = policy.too_busy
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    # What follows runs for every request: the base class's methods are called by name
    # (cheaper than super()) and the checks are flags, about 0.9 us a request in all (module
    # docstring).

    def data_received(self, data: bytes) -> None:
        if self.in_body:
            HttpToolsProtocol.data_received(self, data)
            if self.in_body:
                return
        else:
            self.received += len(data)
            HttpToolsProtocol.data_received(self, data)
            if self.in_body:
                return
        # No head complete and unanswered: enforce the limits, keep a timer running.
        if self.transport.is_closing():
            return
        policy = self.policy
        if self.head_pending:
            if self.received > policy.max_header_bytes:
                self.refuse(policy.too_long)
            elif len(self.headers) > policy.max_headers:
                self.refuse(policy.too_many)
            elif self.header_timer is None:
                self._start_header_timer()
        elif self.header_timer is None and (self.cycle is None or self.cycle.response_complete):
            # Bytes that begin no request (blank lines) stopped uvicorn's keep-alive timer.
            self._start_header_timer()

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self.head_pending = True

    def on_headers_complete(self) -> None:
        self.head_pending = False
        self.in_body = True
        self.received = 0
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        if len(self.headers) > self.policy.max_headers:
            self.app = self.policy.too_many
        if isinstance(self.app, Refusal):  # answered as the app, by uvicorn's cycle
            self.policy.report(logging.WARNING, self._peer(), self.app)
        HttpToolsProtocol.on_headers_complete(self)
        if self.cycle is not None:
            self.cycle.transport = self.writer  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self.in_body = False
        HttpToolsProtocol.on_message_complete(self)

    def handle_websocket_upgrade(self) -> None:
        if isinstance(self.app, Refusal):  # the handshake would reach the app regardless
            self._answer(self.app)
            return
        super().handle_websocket_upgrade()

    def refuse(self, refusal: Refusal) -> None:
        """Log `refusal`, answer it and close, unread bytes left unread."""
        level = logging.INFO if refusal is self.policy.too_slow else logging.WARNING
        self.policy.report(level, self._peer(), refusal)
        self._answer(refusal)

    def _answer(self, refusal: Refusal) -> None:
        # With a response under way (the refused request pipelined behind another), an
        # answer now would cut into it: close without one.
        if self._idle():
            self.transport.write(refusal.response)
        self.transport.close()

    def _idle(self) -> bool:
        """No request is being answered."""
        return self.cycle is None or self.cycle.response_complete

    def _start_header_timer(self) -> None:
        self.header_timer = self.loop.call_later(self.policy.header_timeout_s, self._header_timeout)

    def _stop_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.transport.is_closing():
            return
        if self.head_pending:
            self.refuse(self.policy.too_slow)
        elif self._idle():  # sent nothing, or nothing that begins a request: no answer
            self.transport.close()

    def _peer(self) -> str:
        client = self.client
        return f"{client[0]}:{client[1]}" if client else "an unknown peer"
