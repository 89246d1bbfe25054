"""Who may do what: an API token checked on every request, for almost nothing on the hot path.

    request -> AuthMiddleware -> requirement(path)        public: straight through
                              -> Guard.identify / admit   token, state, address, scope,
                                                          model, quota, rate (guard.py)
                              -> App (infer hot path or Starlette)
                                 counted, and logged with its status and latency

Everything a request needs is in memory; the database is written in batches, never on a
request's path. Issue 5 and docs/auth.md describe the rules.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from cachetools import LRUCache

from ..auth.guard import MAX_CACHED, Guard, Need, UnknownToken
from ..auth.tokens import contains, parse_address, parse_network
from ..errors import CinferError, InvalidRequest, Unauthorized
from .infer import STATUS_KEY, Receive, Scope, Send, match, send_error

ANY = Need(())
READ = Need(("read",))
ADMIN = Need(("admin",))


def requirement(path: str, public_metadata: bool) -> Need | None:
    """What a request to `path` needs; None when it is public. Unknown paths need a token."""
    target = match(path)
    if target is not None:
        return Need(("infer",), "", target[0], target[1], infer=True)
    parts = path.split("/")
    first = parts[1] if len(parts) > 1 else ""
    if first == "v2":
        section = parts[2] if len(parts) > 2 else ""
        if section == "health":
            return None
        if section == "" and len(parts) <= 3:  # server metadata
            return None if public_metadata else READ
        if section == "repository":
            return ADMIN
        if section == "models" and len(parts) > 3:
            return _model_requirement(parts[3:], public_metadata)
        return ANY
    if first == "admin":
        return ADMIN
    if first in ("openapi.json", "docs", "metrics"):
        return None if public_metadata else READ
    return ANY


def _model_requirement(parts: list[str], public_metadata: bool) -> Need | None:
    if parts == ["stats"]:  # every model's statistics
        return None if public_metadata else READ
    model, rest, version = parts[0], parts[1:], None
    if len(rest) >= 2 and rest[0] == "versions":
        version, rest = rest[1], rest[2:]
    if rest in ([], ["config"], ["stats"]):
        return None if public_metadata else Need(("read",), "", model, version)
    if rest == ["ready"]:  # asked by clients about to infer: either scope will do
        return None if public_metadata else Need(("read", "infer"), "", model, version)
    if rest == ["infer"]:
        return Need(("infer",), "", model, version)
    return ANY


class AuthMiddleware:
    """Pure ASGI middleware in front of the whole app (infer hot path and Starlette alike).

    Refused requests get ``{"error": ...}`` with 401/403/429 from here; admitted ones are
    counted and, with their status and latency, logged.
    """

    def __init__(self, app: Any, guard: Guard) -> None:
        self.app = app
        self.guard = guard
        self.rejections: dict[int, int] = {}
        """Refused requests by status (the cinfer_auth_rejections metric)."""
        self._needs: dict[str, Need | None] = {}
        """requirement() per path seen: the infer path of a model is parsed once."""
        self._proxies = tuple(parse_network(p) for p in guard.settings.trusted_proxies)
        self._proxy_ok: LRUCache[str, bool] = LRUCache(MAX_CACHED)

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
        if forwarded is not None and self._proxies and self._is_proxy(address):
            address = self._forwarded_client(forwarded, address)
        if authorization is None:
            return None, address
        scheme, _, value = authorization.partition(b" ")
        if scheme.lower() != b"bearer":
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        return value.strip().decode("latin-1"), address

    def _is_proxy(self, address: str) -> bool:
        trusted = self._proxy_ok.get(address)
        if trusted is None:
            trusted = contains(self._proxies, address)
            self._proxy_ok[address] = trusted
        return trusted

    def _forwarded_client(self, forwarded: bytes, peer: str) -> str:
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
                    f"X-Forwarded-For entry {hop[:64]!r} from proxy {peer} is not an IP address"
                )
            address = str(parsed)
            if not self._is_proxy(address):
                return address
        return address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket":  # none are served; refuse rather than pass unchecked
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        guard = self.guard
        path = scope["path"]
        try:
            need = self._needs[path]
        except KeyError:
            need = requirement(path, guard.public_metadata)
            if len(self._needs) >= MAX_CACHED:
                self._needs.clear()
            self._needs[path] = need
        if need is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        now = guard.clock()
        client = scope.get("client")
        address = client[0] if client else ""
        grant = None
        try:
            credentials, address = self.credentials(scope)
            try:
                grant = guard.identify(credentials)
            except UnknownToken:
                await guard.catch_up()  # a token made by the CLI a moment ago
                grant = guard.identify(credentials)
            if not need.target:
                need = dataclasses.replace(need, target=f"{scope['method']} {path}")
            guard.admit(grant, need, address, now)
        except CinferError as exc:
            if guard.logging:
                guard.record(
                    (now, grant.id if grant else None, need.model, need.version,
                     exc.status_code, (time.perf_counter() - start) * 1000, address)
                )  # fmt: skip
            self.rejections[exc.status_code] = self.rejections.get(exc.status_code, 0) + 1
            await send_error(send, exc.status_code, exc.message, exc.headers)
            return
        if not guard.logging:
            await self.app(scope, receive, send)
            return
        if need.infer and scope["method"] == "POST":
            # The infer endpoint writes its status into the scope: no wrapper on the hot path.
            try:
                await self.app(scope, receive, send)
            finally:
                guard.record(
                    (now, grant.id, need.model, need.version, scope.get(STATUS_KEY, 499),
                     (time.perf_counter() - start) * 1000, address)
                )  # fmt: skip
            return
        status = 499  # nginx's "client closed request": the app never answered

        async def send_with_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            guard.record(
                (now, grant.id, need.model, need.version, status,
                 (time.perf_counter() - start) * 1000, address)
            )  # fmt: skip
