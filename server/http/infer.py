"""POST /v2/models/{model}[/versions/{version}]/infer as a raw ASGI endpoint: the hot path.

Why not a Starlette endpoint: Request/Headers/Response objects per request cost more than the
`tiny` model itself on these 2-core machines, so the route table (routes.py) calls this raw
ASGI endpoint with the path's model and version. It stays thin: read the body, decode
(codec.py), hand to DataPlane.exchange, encode, send. A request that says
``Prefer: respond-async`` goes to the jobs door instead (http/jobs.py: answered 202 with a job).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..dataplane import DataPlane
from ..errors import PayloadTooLarge
from ..inference import InferRequest, InferResponse
from . import codec, forms
from .asgi import (
    BINARY,
    ENCODING_KEY,
    JSON,
    SCOPE_KEY,
    STATUS_KEY,
    Receive,
    Scope,
    Send,
    send_failure,
)

log = logging.getLogger("cinfer")


Deferred = Callable[[Scope, Receive, Send, Mapping[str, str]], Awaitable[None]]
"""Where an infer request with ``Prefer: respond-async`` goes instead (http/jobs.py)."""


class ClientDisconnected(Exception):
    """The client went away before sending its whole body."""


class InferEndpoint:
    def __init__(
        self, dataplane: DataPlane, max_request_bytes: int, deferred: Deferred | None = None
    ) -> None:
        self.dataplane = dataplane
        self.limit = max_request_bytes
        self.decoder = codec.Decoder(regions=dataplane.regions)
        self.deferred = deferred
        """The jobs door, when it is on: it takes the requests that prefer to be answered
        asynchronously (RFC 7240 ``Prefer: respond-async``, as Cog and Replicate use it)."""

    async def asgi(
        self, scope: Scope, receive: Receive, send: Send, params: Mapping[str, str]
    ) -> None:
        """The route table's endpoint (routes.RawEndpoint): one infer request."""
        model = params["model"]
        version = params.get("version")
        length = encoding = header_length = accept = content_type = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value
            elif key == b"content-type":
                content_type = value
            elif key == b"inference-header-content-length":
                header_length = value.decode("latin-1")
            elif key == b"content-encoding":
                encoding = value.decode("latin-1").strip().lower()
            elif key == b"accept-encoding":
                accept = value.decode("latin-1")
            elif key == b"prefer" and self.deferred is not None and respond_async(value):
                await self.deferred(scope, receive, send, params)
                return
        decoder = self.decoder

        def encode(response: InferResponse) -> tuple[bytes, int | None]:
            scope[SCOPE_KEY] = (response.model_name, int(response.model_version), response.rows)
            payload, json_length = codec.encode_response(response)
            if accept:
                payload, used = codec.compress(payload, accept)
                scope[ENCODING_KEY] = used
            return payload, json_length

        try:
            body = await receive_body(receive, length, self.limit)
            if encoding:
                body = codec.decompress(body, encoding, self.limit)
            if content_type is not None and forms.is_form(content_type):
                payload, json_length = await self._form(
                    model, version, body, content_type, scope.get("query_string", b""), encode
                )
            else:
                payload, json_length = await self.dataplane.exchange(
                    model, version, lambda: decoder.decode(body, header_length), encode
                )
        except ClientDisconnected:
            return
        except Exception as exc:
            await send_failure(scope, send, exc, f"infer on model {model}")
            return
        scope[STATUS_KEY] = 200
        headers = [(b"content-type", JSON if json_length is None else BINARY)]
        if json_length is not None:
            headers.append((b"inference-header-content-length", str(json_length).encode()))
        used = scope.get(ENCODING_KEY)
        if used:
            headers.append((b"content-encoding", used.encode()))
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _form(
        self, model: str, version: str | None, body: bytes, content_type: bytes, query: bytes,
        encode: Any,
    ) -> tuple[bytes, int | None]:  # fmt: skip
        """Image files as a form or a raw image body (forms.py), answered as v2 JSON."""
        dataplane = self.dataplane

        def decode() -> InferRequest:
            found = dataplane.version(model, version)
            return forms.decode(body, content_type.decode("latin-1"), query, found)

        result: tuple[bytes, int | None] = await dataplane.exchange(model, version, decode, encode)
        return result


def respond_async(prefer: bytes) -> bool:
    """Whether a Prefer header's value asks for ``respond-async`` (RFC 7240: a list of
    preferences, each maybe with parameters)."""
    for preference in prefer.split(b","):
        if preference.split(b";")[0].split(b"=")[0].strip().lower() == b"respond-async":
            return True
    return False


async def receive_body(receive: Receive, length: bytes | None, limit: int) -> bytes:
    """A raw ASGI request's whole body; 413 as soon as it is known to exceed `limit`."""
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(
            f"request body of {length.decode()} bytes exceeds max_request_bytes ({limit})"
        )
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        raise PayloadTooLarge(f"request body exceeds max_request_bytes ({limit})")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds max_request_bytes ({limit})")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
