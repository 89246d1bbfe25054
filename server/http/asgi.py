"""The ASGI vocabulary every HTTP module shares: the callable's types, the keys the endpoints
leave in the scope for the logs, and the raw JSON error answer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from ..errors import CinferError

log = logging.getLogger("cinfer")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATUS_KEY = "cinfer.status"
"""Set in the ASGI scope by the infer endpoint: the status it answered (for the usage log)."""
GRANT_KEY = "cinfer.grant"
"""The scope key of the admitted request's token (an auth `Grant`): what endpoints that
filter by the caller's rights read."""

ADDRESS_KEY = "cinfer.client"
"""Set in the ASGI scope by the token check for routes other than infer: the client's address
(X-Forwarded-For believed only from a trusted proxy), for the audit log."""

SCOPE_KEY = "cinfer.infer"
"""Set in the ASGI scope after a successful infer: (model, version, rows), for the access log."""

ENCODING_KEY = "cinfer.encoding"
"""Set in the ASGI scope when the answer was compressed: the Content-Encoding used."""

JSON = b"application/json"
BINARY = b"application/octet-stream"


async def send_error(
    send: Send, status: int, message: str, extra: dict[str, str] | None = None
) -> None:
    """Answer `{"error": message}` with `status` (and extra headers) from raw ASGI code."""
    body = orjson.dumps({"error": message})
    headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]
    for key, value in (extra or {}).items():
        headers.append((key.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_failure(scope: Scope, send: Send, exc: Exception, doing: str) -> None:
    """Answer the exception that stopped an endpoint, from raw ASGI code: a CinferError with
    its status and message; anything else is logged with its traceback (`doing` says what
    failed) and answered 500 without detail, since nothing a client sends may crash the
    server or see its insides."""
    if isinstance(exc, CinferError):
        scope[STATUS_KEY] = exc.status_code
        await send_error(send, exc.status_code, exc.message, exc.headers)
        return
    log.error("%s failed unexpectedly", doing, exc_info=exc)
    scope[STATUS_KEY] = 500
    await send_error(send, 500, "internal server error (see the server log)")
