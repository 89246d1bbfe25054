"""Who may do what, on the HTTP side: the credentials a request presents, checked against
what its route needs, for almost nothing on the hot path.

    request -> App: RouteTable.find(method, path)    the route's Access -> Need (routes.py)
            -> Gate: credentials(scope)               Authorization, X-Forwarded-For
                     Admission.admit                  token, state, address, permission,
                                                      model, quota, rate (auth/admission.py)
            -> the route's endpoint                   counted, and logged with its status
                                                      and latency

The token core (auth/) takes plain values and never sees an ASGI scope; this module reads
them out of one. Everything a request needs is in memory; the database is written in batches,
never on a request's path. Issue 5 and docs/auth.md describe the rules.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import cast

from cachetools import LRUCache

from ..auth.admission import Admission, bearer
from ..auth.grant import MAX_CACHED
from ..auth.tokens import contains, parse_address, parse_network
from ..errors import CinferError, InvalidRequest, Unauthorized, show
from .asgi import ADDRESS_KEY, GRANT_KEY, STATUS_KEY, Message, Receive, Scope, Send, send_error
from .routes import Found, RawEndpoint

Run = Callable[[Found, Scope, Receive, Send], Awaitable[None]]


class Gate:
    """The token check in front of every route that needs one (HTTP and WebSocket alike).

    Refused requests get ``{"error": ...}`` with 401/403/429 (a WebSocket is closed with 1008
    and the reason); admitted ones are counted and, with their status and latency, logged.
    """

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.guard = guard = admission.guard
        self.proxies = Proxies(guard.settings.trusted_proxies)

    @property
    def rejections(self) -> dict[int, int]:
        """Refused requests by status, of every door (the cinfer_auth_rejections metric)."""
        return self.admission.rejections

    def credentials(self, scope: Scope) -> tuple[str | None, str]:
        """The bearer token a request presents and the client's address (from
        ``X-Forwarded-For`` only when the peer is a trusted proxy)."""
        authorization = forwarded = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                if authorization is not None:
                    raise Unauthorized("more than one Authorization header")
                authorization = value
            elif key == b"x-forwarded-for":
                forwarded = value if forwarded is None else forwarded + b"," + value
        client = scope.get("client")
        address = client[0] if client else ""
        if forwarded is not None and self.proxies.networks and self.proxies.trusted(address):
            address = self.proxies.client(forwarded, address)
        return bearer(authorization), address

    async def enter(
        self, found: Found, scope: Scope, receive: Receive, send: Send, run: Run
    ) -> None:
        """Check the request's token against what its route needs, then `run` it and log
        the outcome."""
        need = found.need
        assert need is not None
        guard = self.guard
        start = time.perf_counter()
        now = guard.clock()
        client = scope.get("client")
        address = client[0] if client else ""
        try:
            try:
                credentials, address = self.credentials(scope)
            except CinferError as exc:
                self.admission.refused(now, address, exc)
                raise
            grant = await self.admission.admit(credentials, need, address, now, start)
        except CinferError as exc:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": exc.message})
            else:
                await send_error(send, exc.status_code, exc.message, exc.headers)
            return
        scope[GRANT_KEY] = grant
        if not guard.logging:
            await run(found, scope, receive, send)
            return
        if need.infer and scope["type"] == "http":
            # The infer endpoint writes its status into the scope: no wrapper on the hot path,
            # and a raw one is called here rather than through `run` (one frame less).
            route = found.route
            try:
                if route is not None and route.raw:
                    await cast(RawEndpoint, route.endpoint)(scope, receive, send, found.params)
                else:
                    await run(found, scope, receive, send)
            finally:
                self.admission.done(grant, need, scope.get(STATUS_KEY, 499), start, now, address)
            return
        scope[ADDRESS_KEY] = address
        status = 499  # nginx's "client closed request": the app never answered

        async def send_with_status(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "websocket.accept":
                status = 101
            elif kind == "websocket.close" and status == 499:
                status = 403  # closed before accepting: what the client's handshake gets
            await send(message)

        try:
            await run(found, scope, receive, send_with_status)
        finally:
            self.admission.done(grant, need, status, start, now, address)


class Proxies:
    """The ``[auth] trusted_proxies``: whose ``X-Forwarded-*`` headers are believed."""

    def __init__(self, trusted: list[str]) -> None:
        self.networks = tuple(parse_network(p) for p in trusted)
        self._known: LRUCache[str, bool] = LRUCache(MAX_CACHED)

    def address(self, scope: Scope) -> str:
        """The client's address: the peer's, or the one a trusted proxy forwarded."""
        client = scope.get("client")
        peer = client[0] if client else ""
        if not self.networks or not self.trusted(peer):
            return peer
        forwarded = [v for k, v in scope["headers"] if k == b"x-forwarded-for"]
        return self.client(b",".join(forwarded), peer) if forwarded else peer

    def https(self, scope: Scope) -> bool:
        """Whether the client's request came over https: to this server, or to a trusted
        proxy that says so (``X-Forwarded-Proto``)."""
        if scope.get("scheme") in ("https", "wss"):
            return True
        client = scope.get("client")
        if not self.networks or not client or not self.trusted(client[0]):
            return False
        for key, value in scope["headers"]:
            if key == b"x-forwarded-proto":
                return bool(value.split(b",")[0].strip().lower() == b"https")
        return False

    def trusted(self, address: str) -> bool:
        """Whether `address` is one of the trusted proxies."""
        trusted = self._known.get(address)
        if trusted is None:
            trusted = contains(self.networks, address)
            self._known[address] = trusted
        return trusted

    def client(self, forwarded: bytes, peer: str) -> str:
        """The right-most ``X-Forwarded-For`` entry that is not a trusted proxy: the address
        the last trusted proxy saw (entries left of it are whatever the client claimed)."""
        address = peer
        for hop in reversed(forwarded.decode("latin-1").split(",")):
            hop = hop.strip()
            if not hop:
                continue
            parsed = parse_address(hop)
            if parsed is None:
                raise InvalidRequest(
                    f"X-Forwarded-For entry {show(hop)} from proxy {peer} is not an IP address"
                )
            address = str(parsed)
            if not self.trusted(address):
                return address
        return address
