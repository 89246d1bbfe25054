"""A token's rights never grow: what a token may grant, see and manage through the admin API.

A caller (the `Grant` of the token making the request) may create or change a token only to
one within its own rights, and sees and manages only such tokens (issue 12, finding 6):

    permissions   a subset of the caller's
    models        when the caller is limited to models: a non-empty list, each entry one of
                  the caller's patterns or a plain name one of them matches
    addresses     when the caller is limited to addresses: a non-empty list, each range
                  inside one of the caller's
    rate, quota   when the caller has one: set, and no higher
    expiry        when the caller expires: no later

A caller with every permission and no limits passes every check: the rules cost an
unrestricted admin nothing. Plain values in, a reason or None out; http/admin.py applies them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .grant import Grant
from .tokens import (
    PERMISSIONS,
    Network,
    Token,
    TokenPatch,
    TokenSpec,
    iso,
    parse_expiry,
    parse_network,
)

GLOB_CHARACTERS = frozenset("*?[]!")


def beyond(caller: Grant, token: Token) -> str | None:
    """Why `token` holds rights `caller` lacks (naming the field and the caller's limit), or
    None when it is within them."""
    who = f"API token {caller.name!r}"
    extra = [p for p in PERMISSIONS if p in token.permissions and p not in caller.permissions]
    if extra:
        mine = ",".join(p for p in PERMISSIONS if p in caller.permissions)
        return f"{who} may not grant the {','.join(extra)} scope (its scopes: {mine})"
    if caller.patterns:
        mine = ",".join(caller.patterns)
        if not token.models:
            return f"{who} may not grant every model (its models: {mine})"
        for model in token.models:
            if model not in caller.patterns and (
                GLOB_CHARACTERS & set(model) or not caller.allows_model(model)
            ):
                return f"{who} may not grant model {model!r} (its models: {mine})"
    if caller.networks:
        mine = ",".join(str(n) for n in caller.networks)
        if not token.ips:
            return f"{who} may not grant every address (its ips: {mine})"
        for text in token.ips:
            if not _inside(parse_network(text), caller.networks):
                return f"{who} may not grant address range {text} (its ips: {mine})"
    for field, own, theirs in (
        ("rate_limit", int(caller.capacity), token.rate_limit),
        ("monthly_quota", caller.quota, token.monthly_quota),
    ):
        if own and not 0 < theirs <= own:
            given = "none" if not theirs else str(theirs)
            return f"{who} may not grant {field} {given} (its {field}: {own})"
    if caller.expires_at is not None and (
        token.expires_at is None or token.expires_at > caller.expires_at
    ):
        when = iso(token.expires_at) or "never"
        return f"{who} may not grant an expiry of {when} (it expires at {iso(caller.expires_at)})"
    return None


def unlimited(caller: Grant) -> bool:
    """Every permission and no limit: nothing is beyond it."""
    return (
        len(caller.permissions) == len(PERMISSIONS)
        and not (caller.patterns or caller.networks or caller.capacity or caller.quota)
        and caller.expires_at is None
    )


def _inside(network: Network, networks: tuple[Network, ...]) -> bool:
    return any(
        network.version == own.version and network.subnet_of(own)  # type: ignore[arg-type]
        for own in networks
    )


def proposed(change: TokenSpec | TokenPatch, base: Token, now: float) -> Token:
    """`base` as it would be after `change` (a new token's spec: every field; a patch: the
    fields it sets), its expiry parsed at `now`: what `beyond` judges before anything is
    stored."""
    every = isinstance(change, TokenSpec)
    fields = change.model_fields_set
    changes: dict[str, Any] = {}
    convert: dict[str, Any] = {"permissions": frozenset, "models": tuple, "ips": tuple}
    for key in ("rate_limit", "monthly_quota", *convert):
        value = getattr(change, key)
        if value is not None and (every or key in fields):
            changes[key] = convert[key](value) if key in convert else value
    if every or "expires" in fields:
        changes["expires_at"] = parse_expiry(change.expires or "never", now)
    return dataclasses.replace(base, **changes)
