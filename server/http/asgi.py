"""The ASGI vocabulary every HTTP module shares: the callable's types, the keys the endpoints
leave in the scope for the logs, and the raw JSON error answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATUS_KEY = "cinfer.status"
GRANT_KEY = "cinfer.grant"
"""The scope key of the admitted request's token (an auth `Grant`): what endpoints that
filter by the caller's rights read."""
"""Set in the ASGI scope by the infer endpoint: the status it answered (for the usage log)."""

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
