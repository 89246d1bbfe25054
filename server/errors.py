"""The server's one error root and the tree under it.

Every error a client can see is a `CinferError`; it carries the HTTP status it maps to, and
one handler registered on the root turns it into `{"error": "<message>"}`. Third-party errors
(onnxruntime, tomllib, pydantic, ...) are translated where they happen with `raise ... from exc`,
so nothing foreign reaches the HTTP layer.

    CinferError (500)
    ├── ConfigError (500)            config.toml / model.toml / model files that cannot be used
    │   └── ModelLoadError (500)     a version that failed to load: the reason shown in the index
    ├── InvalidRequest (400)         malformed body, unknown or mismatched tensor, bad shape
    ├── Unauthorized (401)           no, malformed, unknown, expired, paused or revoked token
    ├── Forbidden (403)              client address, scope or model not allowed for the token
    ├── NotFound (404)               unknown model, version, route or token
    ├── Conflict (409)               a token name already taken, a revoked token resumed
    ├── PayloadTooLarge (413)        body over [server] max_request_bytes
    ├── TooManyRequests (429)        a token's rate limit or monthly quota
    ├── Unavailable (503)            model not ready, queue full, queue timeout
    ├── Unsupported (501)
    ├── EngineError (500)            an engine failed while running a request
    └── DatabaseError (500)          the token database cannot be opened, migrated or written

A message names what was wrong and echoes the client's value as the client wrote it, in JSON
(`show`): ``unknown datatype null``, not Python's ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson


def show(value: Any, limit: int = 60) -> str:
    """`value` as JSON, cut to about `limit` characters, for an error message."""
    if isinstance(value, list | dict) and len(value) > limit:  # don't render a whole tensor
        value = value[:limit] if isinstance(value, list) else dict(list(value.items())[:limit])
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # not a JSON value (a door that decodes something else)
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CinferError(Exception):
    """Root of every error the server reports; `status_code` is the HTTP status it maps to."""

    status_code: int = 500

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers) if headers else None

    def __str__(self) -> str:
        return self.message


class ConfigError(CinferError):
    """A settings or model file that cannot be used; the message names the file and key."""


class ModelLoadError(ConfigError):
    """A model version that could not be loaded; the message is the reason the index shows."""


class InvalidRequest(CinferError):
    status_code = 400


class Unauthorized(CinferError):
    """No usable credentials; the response asks for a bearer token (RFC 6750)."""

    status_code = 401

    def __init__(self, message: str, *, invalid_token: bool = True) -> None:
        challenge = 'Bearer realm="cinfer"'
        if invalid_token:
            challenge += ', error="invalid_token"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class Forbidden(CinferError):
    status_code = 403


class NotFound(CinferError):
    status_code = 404


class Conflict(CinferError):
    status_code = 409


class PayloadTooLarge(CinferError):
    status_code = 413


class TooManyRequests(CinferError):
    """Over a rate limit or quota; `retry_after` seconds become the Retry-After header."""

    status_code = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


class Unavailable(CinferError):
    status_code = 503


class Unsupported(CinferError):
    status_code = 501


class EngineError(CinferError):
    """An engine failed on a request; the client sees the short message, the log the traceback."""


class DatabaseError(CinferError):
    """SQLite failed (locked past the busy timeout, disk full, a newer schema); names the file."""
