"""Letting one request through a token, for every door: the check both REST and gRPC run.

    door: credentials + address + Need --Admission.admit--> Grant, or the CinferError
          (401/403/429) the door answers in its own form; refusals are counted and logged

A door reads the bearer token and the client's address out of its own request (an ASGI
scope's headers, gRPC metadata) and hands plain values here; the rules are the Guard's
(auth/guard.py). `rejections` counts refused requests by status for every door together (the
cinfer_auth_rejections metric).
"""

from __future__ import annotations

import time

from ..errors import CinferError, Unauthorized
from .grant import Grant, LeaseNeeded, Need, UnknownToken
from .guard import Guard


class Admission:
    """The token check of every door, over one Guard."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.rejections: dict[int, int] = {}
        """Refused requests by status, whatever door they came through."""

    async def admit(
        self, credentials: str | None, need: Need, address: str, now: float, start: float
    ) -> Grant:
        """The grant that lets this request through at `now` (taking the next block of its
        quota when needed), or the error that refuses it, counted and, for a known token,
        logged (`start`: the request's perf_counter at arrival, for the logged latency)."""
        guard = self.guard
        grant = None
        try:
            try:
                grant = guard.identify(credentials)
            except UnknownToken:
                await guard.catch_up()  # a token made by the CLI a moment ago
                grant = guard.identify(credentials)
            while True:
                try:
                    guard.admit(grant, need, address, now)
                    return grant
                except LeaseNeeded:  # the next block of its monthly quota, then again
                    await guard.lease(grant)
                    grant = guard.identify(credentials)
        except CinferError as exc:
            if grant is None:
                guard.refuse(now, address, exc.status_code)
            elif guard.logging:
                guard.record(
                    (now, grant.id, need.model, need.version, exc.status_code,
                     (time.perf_counter() - start) * 1000, address)
                )  # fmt: skip
            self.count(exc)
            raise

    def refused(self, now: float, address: str, exc: CinferError) -> None:
        """A request refused before it reached `admit` (credentials it could not parse)."""
        self.guard.refuse(now, address, exc.status_code)
        self.count(exc)

    def count(self, exc: CinferError) -> None:
        self.rejections[exc.status_code] = self.rejections.get(exc.status_code, 0) + 1

    def done(self, grant: Grant, need: Need, status: int, start: float, now: float,
             address: str) -> None:  # fmt: skip
        """Log an admitted request's outcome (when the usage log is on)."""
        if self.guard.logging:
            self.guard.record(
                (now, grant.id, need.model, need.version, status,
                 (time.perf_counter() - start) * 1000, address)
            )  # fmt: skip


def bearer(authorization: str | bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (None: no header), or 401."""
    if authorization is None:
        return None
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return value.strip()
