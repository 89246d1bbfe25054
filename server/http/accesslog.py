"""The optional access log: one line per request, as text or JSON ([server] access_log).

Each request gets an id: the client's `X-Request-ID` when it is a sane token, a fresh one
otherwise; it is echoed in the response so a client can quote it. Infer requests add the model,
the version that served them and their batch size (set in the scope by infer.py).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

import orjson

from .asgi import SCOPE_KEY, Message, Receive, Scope, Send

log = logging.getLogger("cinfer.access")

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class AccessLog:
    """ASGI middleware logging every HTTP request once it has been answered."""

    def __init__(self, app: object, style: str) -> None:
        self.app = app
        self.json = style == "json"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # type: ignore[operator]
            return
        start = time.perf_counter_ns()
        request_id = b""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                request_id = value
                break
        if not _REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex.encode()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)  # type: ignore[operator]
        finally:
            self._log(scope, request_id.decode(), status, time.perf_counter_ns() - start)

    def _log(self, scope: Scope, request_id: str, status: int, duration_ns: int) -> None:
        model, version, rows = scope.get(SCOPE_KEY, (None, None, None))
        client = scope.get("client")
        fields = {
            "request_id": request_id,
            "method": scope["method"],
            "path": scope["path"],
            "status": status or 499,  # no response started: the client went away
            "latency_ms": round(duration_ns / 1e6, 3),
            "model": model,
            "version": version,
            "batch_size": rows,
            "client": f"{client[0]}:{client[1]}" if client else None,
        }
        if self.json:
            log.info("%s", orjson.dumps(fields).decode())
        else:
            log.info(" ".join(f"{k}={v}" for k, v in fields.items() if v is not None))
