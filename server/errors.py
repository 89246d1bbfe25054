"""The server's one error root and the tree under it.

Every error a client can see is a `CinferError`; it carries the HTTP status it maps to, and
one handler registered on the root turns it into `{"error": "<message>"}`. Third-party errors
(onnxruntime, tomllib, pydantic, ...) are translated where they happen with `raise ... from exc`,
so nothing foreign reaches the HTTP layer.

    CinferError (500)
    ├── ConfigError (500)            config.toml / model.toml / model files that cannot be used
    │   └── ModelLoadError (500)     a version that failed to load: the reason shown in the index
    ├── InvalidRequest (400)         malformed body, unknown or mismatched tensor, bad shape
    ├── NotFound (404)               unknown model, version or route
    ├── PayloadTooLarge (413)        body over [server] max_request_bytes
    ├── Unavailable (503)            model not ready, queue full, queue timeout
    ├── Unsupported (501)
    └── EngineError (500)            an engine failed while running a request
"""

from __future__ import annotations

from collections.abc import Mapping


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


class NotFound(CinferError):
    status_code = 404


class PayloadTooLarge(CinferError):
    status_code = 413


class Unavailable(CinferError):
    status_code = 503


class Unsupported(CinferError):
    status_code = 501


class EngineError(CinferError):
    """An engine failed on a request; the client sees the short message, the log the traceback."""
