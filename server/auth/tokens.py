"""API tokens: their shape, their secret's hash, and the validated fields they carry.

A token is ``cinfer_<id>_<secret>``: `id` is 12 hex digits (public: it names the token in
logs, the CLI and the admin API), `secret` 43 base-62 characters (256 bits). The database
keeps the id and sha256(secret) only; the full token is shown once, at creation. A fast hash
is enough here because the secret is random and long, not a password (no dictionary to try).

Storage is auth/store.py, enforcement auth/guard.py (with http/access.py reading the
credentials out of HTTP requests), management cli/tokens.py and http/admin.py; this module is
the vocabulary they share. What a token may do is its `permissions` (``scopes`` on the wire
and in the CLI, as before). See docs/auth.md and issue 5.
"""

from __future__ import annotations

import calendar
import hashlib
import ipaddress
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidRequest, show

Clock = Callable[[], float]
"""Seconds since the epoch, `time.time`; injected so expiry, rates and months are testable."""

Permission = Literal["infer", "read", "admin"]
Status = Literal["active", "paused", "revoked"]
PERMISSIONS: tuple[Permission, ...] = ("infer", "read", "admin")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PREFIX = "cinfer_"
TOKEN = re.compile(r"cinfer_([0-9a-f]{12})_([0-9A-Za-z]{43})")
ID = re.compile(r"[0-9a-f]{12}")
# ASCII only, like model patterns: a Cyrillic a (U+0430) made a look-alike "admin" beside
# "admin", and \w took Arabic-Indic digits and Roman numerals (issue 12, finding 11).
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
GLOB = re.compile(r"[A-Za-z0-9_.\-*?\[\]!]{1,128}")
DURATION = re.compile(r"([0-9]{1,6})([hdw])")
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
MAX_REMARK = 1000
MAX_LIST = 256
MIN_TIME = float(calendar.timegm((1, 1, 1, 0, 0, 0)))
MAX_TIME = float(calendar.timegm((9999, 12, 31, 23, 59, 59)))
"""The instants `iso` can write, and so the range of every expiry (issue 12, finding 4)."""
EPOCH = datetime(1970, 1, 1)


def generate() -> tuple[str, str, bytes]:
    """A new token: (id, the full token to show once, the hash to store)."""
    number = int.from_bytes(secrets.token_bytes(32), "big")
    digits = []
    for _ in range(43):  # 62**43 > 2**256
        number, digit = divmod(number, 62)
        digits.append(BASE62[digit])
    secret = "".join(digits)
    token_id = secrets.token_hex(6)
    return token_id, f"{PREFIX}{token_id}_{secret}", hash_secret(secret)


SHAPE = "cinfer_<12 hex digits>_<43 letters and digits>"
SECRET = re.compile(r"[0-9A-Za-z]*")


def split(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None (`diagnose` says what is wrong)."""
    found = TOKEN.fullmatch(token)
    return (found.group(1), found.group(2)) if found else None


def diagnose(token: str) -> str:
    """What is wrong with a token that does not `split`, for the 401. It gives lengths and
    which part is wrong, never the characters: a mistyped token is nearly a secret."""
    length = len(token)
    expected = f"expected {SHAPE}"
    if not token:
        return f"the token is empty ({expected})"
    if length > 255:
        return f"it has {length} characters, a token {len(PREFIX) + 12 + 1 + 43} ({expected})"
    if not token.startswith(PREFIX):
        return f"it does not start with {PREFIX} ({expected})"
    token_id, underscore, secret = token[len(PREFIX) :].partition("_")
    if not underscore:
        return f"no '_' between the id and the secret ({expected})"
    if len(token_id) != 12:
        return f"the id after {PREFIX} has {len(token_id)} characters, not 12 ({expected})"
    if not ID.fullmatch(token_id):
        return f"the id after {PREFIX} is not 12 lower-case hex digits 0-9a-f ({expected})"
    if not SECRET.fullmatch(secret):
        return (
            f"the secret after the id holds characters other than letters and digits ({expected})"
        )
    if len(secret) != 43:
        return f"the secret after the id has {len(secret)} characters, not 43 ({expected})"
    return expected  # not reached: such a token splits


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


# -- time -----------------------------------------------------------------------------------


def iso(timestamp: float | None) -> str | None:
    """``2026-11-30T23:59:59Z``, the form every API and CLI output uses; None for None and for
    an instant no date names (before year 1, after year 9999, not finite: a row an older
    version or a hand wrote, see `store._token`), so one such row cannot fail a listing."""
    if timestamp is None or not MIN_TIME <= timestamp <= MAX_TIME:  # False for NaN too
        return None
    m = datetime.fromtimestamp(timestamp, UTC)
    # Not strftime: its %Y writes year 1 as "1" on glibc.
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}Z"


def month_of(now: float) -> tuple[str, float, float]:
    """The UTC calendar month holding `now`: (``"2026-11"``, its start, the next month's start)."""
    day = datetime.fromtimestamp(now, UTC)
    start = calendar.timegm((day.year, day.month, 1, 0, 0, 0))
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    end = calendar.timegm((year, month, 1, 0, 0, 0))
    return f"{day.year:04d}-{day.month:02d}", float(start), float(end)


def parse_expiry(text: str, now: float) -> float | None:
    """When a token given ``--expires TEXT`` at `now` stops working; None for never.

    ``30d``, ``12h``, ``2w``: that long from now. ``2027-01-31``: the end of that UTC day (the
    token works through the 31st). ``2027-01-31T12:00:00Z`` or with an offset: that instant
    (UTC when no offset is given). ``never``: no expiry.
    """
    value = text.strip()
    if value.lower() in ("never", "none"):
        return None
    shown = repr(text if len(text) <= 60 else text[:57] + "...")
    relative = DURATION.fullmatch(value)
    if relative:
        count, unit = int(relative.group(1)), relative.group(2)
        if count == 0:
            raise InvalidRequest(f"expires {shown} is not in the future")
        stamp = now + count * {"h": 3600, "d": 86400, "w": 7 * 86400}[unit]
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidRequest(
                f"expires {shown} is not a date (2027-01-31), a date and time "
                "(2027-01-31T12:00:00Z), a duration (30d, 12h, 2w) or 'never'"
            ) from exc
        # Seconds by subtraction, not datetime arithmetic: an offset (9999-12-31T23:59:59-14:00)
        # or the day after a date (9999-12-31) can fall outside what a datetime holds.
        offset = moment.utcoffset() or timedelta(0)
        stamp = (moment.replace(tzinfo=None) - EPOCH - offset).total_seconds()
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
            stamp += 86400  # through that day
    # Every expiry is a moment `iso` can write: a later one would be stored and then fail
    # every listing that shows it (issue 12, finding 4).
    if stamp > MAX_TIME:
        raise InvalidRequest(f"expires {shown} is beyond {iso(MAX_TIME)}, the latest expiry")
    if stamp <= now:
        when = iso(stamp) or "before 0001-01-01T00:00:00Z"
        raise InvalidRequest(f"expires {shown} ({when}) is in the past")
    return stamp


# -- addresses ------------------------------------------------------------------------------


def parse_network(text: str) -> Network:
    """An address (``10.1.2.3``, ``2001:db8::1``) or a CIDR range (``10.0.0.0/8``)."""
    value = text.strip()
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(
                f"{text!r} is not an IPv4 or IPv6 address or CIDR range (10.0.0.0/8, 2001:db8::/32)"
            ) from exc
        raise ValueError(f"{text!r} has host bits set; did you mean {loose}?") from exc


def canonical_network(text: str) -> str:
    """`text` as an address or CIDR range in canonical form (a lone address without /32)."""
    network = parse_network(text)
    return str(network.network_address if network.num_addresses == 1 else network)


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client address, IPv4-mapped IPv6 folded to IPv4 (``::ffff:10.0.0.1`` is 10.0.0.1)."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def contains(networks: Iterable[Network], address: str) -> bool:
    parsed = parse_address(address)
    return parsed is not None and any(parsed in network for network in networks)


# -- validated fields -------------------------------------------------------------------------


def _name(value: str) -> str:
    value = value.strip()
    if not NAME.fullmatch(value):
        raise ValueError(
            f"token name {value!r} must be 1-64 ASCII letters, digits, '_', '.' or '-', "
            "starting with a letter, digit or '_'"
        )
    if ID.fullmatch(value):
        raise ValueError(f"token name {value!r} looks like a token id; pick another name")
    return value


def _remark(value: str) -> str:
    if len(value) > MAX_REMARK:
        raise ValueError(f"remark is {len(value)} characters; at most {MAX_REMARK} are kept")
    if any(unicodedata.category(c) == "Cc" and c not in "\t\n" for c in value):
        raise ValueError("remark contains control characters")
    return value


def _globs(values: list[str]) -> list[str]:
    out = []
    for value in values:
        value = value.strip()
        if not GLOB.fullmatch(value):
            raise ValueError(
                f"model pattern {value!r} must be a model name or a glob of ASCII "
                "letters, digits, '_.-' and '*?[]!' (1-128 characters)"
            )
        if value not in out:
            out.append(value)
    return out


def _networks(values: list[str]) -> list[str]:
    out = []
    for value in values:
        network = canonical_network(value)
        if network not in out:
            out.append(network)
    return out


def _permissions(values: list[Permission]) -> list[Permission]:
    if not values:
        raise ValueError(f"at least one scope is needed ({', '.join(PERMISSIONS)})")
    return [s for s in PERMISSIONS if s in values]


Name = Annotated[str, AfterValidator(_name)]
Remark = Annotated[str, AfterValidator(_remark)]
Globs = Annotated[list[str], Field(max_length=MAX_LIST), AfterValidator(_globs)]
Networks = Annotated[list[str], Field(max_length=MAX_LIST), AfterValidator(_networks)]
Permissions = Annotated[list[Permission], AfterValidator(_permissions)]
Count = Annotated[int, Field(ge=0, le=2**53)]


# Strict: every field has its JSON type, so "10" or true is no rate limit and 1 no name (issue
# 12, finding 11). The CLI converts its arguments first (click's type=int, comma lists).
STRICT = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class TokenSpec(BaseModel):
    """What `cinfer tokens create` and ``POST /admin/tokens`` take."""

    model_config = STRICT

    name: Name
    remark: Remark = ""
    permissions: Permissions = Field(["infer"], alias="scopes")
    """What the token may do: infer, read, admin (``scopes`` in the API and the CLI)."""
    models: Globs = []
    """Model names or glob patterns (``resnet*``) the token may use; empty: every model."""
    ips: Networks = []
    """Client addresses or CIDR ranges the token may be used from; empty: anywhere."""
    rate_limit: Count = 0
    """Requests per minute (a bucket of that many, refilled evenly); 0: no limit."""
    monthly_quota: Count = 0
    """Requests per UTC calendar month; 0: no quota."""
    expires: str | None = None
    """``2027-01-31``, ``2027-01-31T12:00:00Z``, ``30d``, ``12h``, ``2w`` or ``never``."""


class TokenPatch(BaseModel):
    """What ``PATCH /admin/tokens/{ref}`` and `cinfer tokens update` change; absent: kept."""

    model_config = STRICT

    name: Name | None = None
    remark: Remark | None = None
    permissions: Permissions | None = Field(None, alias="scopes")
    models: Globs | None = None
    ips: Networks | None = None
    rate_limit: Count | None = None
    monthly_quota: Count | None = None
    expires: str | None = None
    status: Literal["active", "paused", "revoked"] | None = None


def validate(model: type[TokenSpec] | type[TokenPatch], data: Any, what: str) -> Any:
    """`model` from `data`, or an InvalidRequest naming every field that was wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid {what}: {describe(exc)}") from exc


def describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors()[:8]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] not in ("value_error", "missing") and isinstance(
            error["input"], str | int | float | None
        ):
            message += f", not {show(error['input'])}"  # value errors name it themselves
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


@dataclass
class Token:
    """A stored token, as the database holds it (no secret, only its hash)."""

    id: str
    name: str
    secret_hash: bytes = field(repr=False)
    remark: str = ""
    created_at: float = 0.0
    expires_at: float | None = None
    status: Status = "active"
    permissions: frozenset[str] = frozenset({"infer"})
    models: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    rate_limit: int = 0
    monthly_quota: int = 0
    usage_month: str = ""
    """The month `used` counts, ``2026-11``; a count for an older month is stale (0 now)."""
    used: int = 0
    last_used_at: float | None = None

    def used_in(self, month: str) -> int:
        return self.used if self.usage_month == month else 0

    def public(self, now: float | None = None) -> dict[str, Any]:
        """The JSON form the CLI and the admin API show; never the secret or its hash."""
        now = time.time() if now is None else now
        month = month_of(now)[0]
        return {
            "id": self.id,
            "name": self.name,
            "remark": self.remark,
            "status": self.status,
            "expired": self.expires_at is not None and now >= self.expires_at,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "scopes": sorted(self.permissions, key=PERMISSIONS.index),
            "models": list(self.models),
            "ips": list(self.ips),
            "rate_limit": self.rate_limit,
            "monthly_quota": self.monthly_quota,
            "used_this_month": self.used_in(month),
            "last_used_at": iso(self.last_used_at),
        }
