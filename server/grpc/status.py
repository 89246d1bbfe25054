"""Errors as gRPC status codes: the REST status each `CinferError` carries, mapped.

    400 INVALID_ARGUMENT    401 UNAUTHENTICATED    403 PERMISSION_DENIED   404 NOT_FOUND
    409 ALREADY_EXISTS      413 RESOURCE_EXHAUSTED 429 RESOURCE_EXHAUSTED  501 UNIMPLEMENTED
    503 UNAVAILABLE         500 INTERNAL

The message is the one REST puts in ``{"error": ...}``; a 429's Retry-After travels as the
``retry-after`` trailing metadata. Anything that is not a `CinferError` is a bug of ours:
logged with its traceback, answered INTERNAL without detail.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from ..errors import CinferError
from .calls import CallContext

log = logging.getLogger("cinfer")

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def code(exc: CinferError) -> grpc.StatusCode:
    return CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)


async def abort(context: CallContext, exc: BaseException, what: str) -> NoReturn:
    """End the call with the status `exc` stands for (never returns)."""
    if isinstance(exc, CinferError):
        if exc.headers and "Retry-After" in exc.headers:
            context.set_trailing_metadata((("retry-after", exc.headers["Retry-After"]),))
        await context.abort(code(exc), exc.message)
    log.error("unhandled error on gRPC %s", what, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal server error (see the server log)")
    raise AssertionError("context.abort ends the call by raising")  # never reached
