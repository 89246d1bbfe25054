"""One API token's live state, and what a request needs from it.

A `Grant` holds a token's rules as the per-request check reads them (address ranges parsed,
model decisions cached), its rate bucket, its quota lease and its requests not yet written;
auth/guard.py keeps one per token and decides with them. A `Need` is what a route asks of a
request's token (http/routes.py makes them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from cachetools import LRUCache

from ..errors import Forbidden, Unauthorized
from .tokens import Network, Token, contains, parse_network

MAX_CACHED = 4096
"""Entries per in-memory cache (verified tokens, model and address decisions), least
recently used dropped first."""


class LeaseNeeded(Exception):
    """The token's quota lease is spent: `await Guard.lease(grant)`, then admit again."""


class UnknownToken(Unauthorized):
    """A well-formed token that no loaded token matches (yet: see Guard.catch_up)."""


@dataclass(frozen=True, slots=True)
class Need:
    """What a request needs: a valid token with one of `permissions` (none: any valid token),
    and `model` allowed when set."""

    permissions: tuple[str, ...]
    target: str = ""
    """What the request does, for messages: ``GET /v2/models/iris/config``."""
    model: str | None = None
    version: str | None = None
    infer: bool = False
    """An inference: the door reports the status itself, the usage log counts it."""
    every_model: bool = False
    """A server-wide answer that names every model: only a token without model limits."""


class Grant:
    """One token's live state: its rules, its rate bucket and its uncounted requests."""

    __slots__ = (
        "active",
        "address_ok",
        "bucket",
        "capacity",
        "expires_at",
        "flushing",
        "id",
        "last_used",
        "lease",
        "lease_size",
        "leased_at",
        "model_ok",
        "month",
        "name",
        "networks",
        "patterns",
        "pending",
        "permissions",
        "quota",
        "rate",
        "stamp",
        "token",
        "used",
        "written_use",
    )

    def __init__(self, token: Token, month: str) -> None:
        self.token = token
        self.id = token.id
        self.name = token.name
        self.active = token.status == "active"
        self.expires_at = token.expires_at
        self.permissions = token.permissions
        self.networks: tuple[Network, ...] = tuple(parse_network(ip) for ip in token.ips)
        self.patterns = token.models
        self.model_ok: LRUCache[str, bool] = LRUCache(MAX_CACHED)
        self.address_ok: LRUCache[str, bool] = LRUCache(MAX_CACHED)
        self.capacity = float(token.rate_limit)
        self.rate = token.rate_limit / 60.0
        self.bucket = self.capacity
        self.stamp = 0.0
        self.quota = token.monthly_quota
        self.month = month
        self.used = token.used_in(month)
        """This month's requests as the database last said, plus those written since."""
        self.flushing = 0
        """Requests being written right now."""
        self.pending = 0
        """Requests not yet written."""
        self.last_used: float | None = token.last_used_at
        self.written_use = self.last_used
        """`last_used` as last written."""
        self.lease = 0
        """Requests of the quota taken from the database (counted in `used`), not yet served."""
        self.lease_size = 1
        self.leased_at: float | None = None

    def count(self) -> int:
        """This month's requests: served, being written, not written yet."""
        return self.used + self.flushing + self.pending - self.lease

    def allows_model(self, model: str) -> bool:
        allowed = self.model_ok.get(model)
        if allowed is None:
            allowed = any(fnmatchcase(model, pattern) for pattern in self.patterns)
            self.model_ok[model] = allowed
        return allowed

    def allows_address(self, address: str) -> bool:
        allowed = self.address_ok.get(address)
        if allowed is None:
            allowed = contains(self.networks, address)
            self.address_ok[address] = allowed
        return allowed

    def level(self, now: float) -> float:
        """The requests the bucket holds at `now` (refilled since it was last taken from)."""
        return min(self.capacity, self.bucket + max(0.0, now - self.stamp) * self.rate)

    def take(self, now: float) -> float:
        """Take one request from the bucket: 0, or the seconds until one is available.

        A token bucket holding `rate_limit` requests, refilled evenly over a minute: a burst of
        up to the limit, then the limit per minute.
        """
        if now > self.stamp:
            self.bucket, self.stamp = self.level(now), now
        if self.bucket >= 1.0:
            self.bucket -= 1.0
            return 0.0
        return (1.0 - self.bucket) / self.rate


Steps = Callable[[str], tuple[str, ...]]
"""Model -> the models it runs as a pipeline's steps (pipelines.step_models); () for others."""


def no_steps(model: str) -> tuple[str, ...]:
    return ()


def check_steps(grant: Grant, model: str, steps: Steps) -> None:
    """A token limited to some models may use a pipeline only if it may use every step's."""
    for step in steps(model):
        if not grant.allows_model(step):
            raise Forbidden(
                f"API token {grant.name!r} may not use model {step!r}, a step of pipeline {model!r}"
            )
