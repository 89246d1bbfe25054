"""auth/rights.py: what a token may grant, field by field (issue 12, finding 6)."""

from __future__ import annotations

from typing import Any

import pytest

from server.auth import rights
from server.auth.grant import Grant
from server.auth.tokens import Token, TokenPatch, TokenSpec

NOW = 1_800_000_000.0
EVERY = frozenset({"infer", "read", "admin"})


def token(**fields: Any) -> Token:
    fields.setdefault("permissions", EVERY)
    for key in ("models", "ips"):
        fields[key] = tuple(fields.get(key, ()))
    return Token(id="0" * 12, name="t", secret_hash=b"", **fields)


def caller(**fields: Any) -> Grant:
    grant = Grant(token(**fields), "2027-01")
    grant.name = "ops"
    return grant


def test_an_unlimited_caller_may_grant_anything() -> None:
    root = caller()
    assert rights.unlimited(root)
    assert rights.beyond(root, token(models=["*"], ips=["0.0.0.0/0"], rate_limit=0)) is None
    for limit in [
        {"permissions": frozenset({"admin"})},
        {"models": ["iris"]},
        {"ips": ["10.0.0.0/8"]},
        {"rate_limit": 5},
        {"monthly_quota": 5},
        {"expires_at": NOW},
    ]:
        assert not rights.unlimited(caller(**limit)), limit


@pytest.mark.parametrize(
    ("mine", "granted", "allowed"),
    [
        (["iris"], ["iris"], True),
        (["iri*"], ["iris"], True),  # a plain name the caller's pattern matches
        (["iri*"], ["iri*"], True),  # the pattern as written
        (["iri*"], ["ir*"], False),  # a wider pattern
        (["iris"], ["iri*"], False),
        (["iri*"], ["iris", "digits"], False),
        (["iris"], [], False),  # no list: every model
        (["iris"], ["[i]ris"], False),  # a glob that happens to match only what it may
    ],
)
def test_models_are_the_callers_patterns_or_plain_names_they_match(
    mine: list[str], granted: list[str], allowed: bool
) -> None:
    reason = rights.beyond(caller(models=mine), token(models=granted))
    assert (reason is None) == allowed, reason


@pytest.mark.parametrize(
    ("mine", "granted", "allowed"),
    [
        (["10.0.0.0/8"], ["10.1.0.0/16", "10.2.3.4"], True),
        (["10.0.0.0/8"], ["10.0.0.0/7"], False),
        (["10.0.0.0/8"], ["::ffff:10.0.0.1"], False),  # another version is never inside
        (["2001:db8::/32"], ["2001:db8:1::/48"], True),
        (["10.0.0.0/8"], [], False),
    ],
)
def test_address_ranges_must_lie_inside_the_callers(
    mine: list[str], granted: list[str], allowed: bool
) -> None:
    reason = rights.beyond(caller(ips=mine), token(ips=granted))
    assert (reason is None) == allowed, reason


def test_limits_must_be_set_and_no_higher_and_expiry_no_later() -> None:
    limited = caller(rate_limit=100, monthly_quota=1000, expires_at=NOW + 3600)
    ok = {"rate_limit": 100, "monthly_quota": 1, "expires_at": NOW + 60}
    assert rights.beyond(limited, token(**ok)) is None
    for change, message in [
        ({"rate_limit": 0}, "rate_limit none (its rate_limit: 100)"),
        ({"rate_limit": 101}, "rate_limit 101"),
        ({"monthly_quota": 0}, "monthly_quota none"),
        ({"expires_at": None}, "an expiry of never"),
        ({"expires_at": NOW + 3601}, "an expiry of"),
    ]:
        reason = rights.beyond(limited, token(**{**ok, **change}))
        assert reason is not None and message in reason, (change, reason)


def test_scopes_must_be_a_subset() -> None:
    reason = rights.beyond(caller(permissions=frozenset({"admin", "infer"})), token())
    assert reason == "API token 'ops' may not grant the read scope (its scopes: infer,admin)"


def test_a_change_is_judged_on_the_token_as_it_would_be_after_it() -> None:
    base = token(models=["iris"], rate_limit=10)
    after = rights.proposed(TokenPatch(models=[]), base, NOW)
    assert after.models == () and after.rate_limit == 10  # fields not set are kept
    assert rights.proposed(TokenPatch(remark="x"), base, NOW).expires_at is None
    spec = TokenSpec(name="new", expires="1d", scopes=["infer"])
    fresh = rights.proposed(spec, token(), NOW)
    assert fresh.expires_at == NOW + 86400 and fresh.permissions == frozenset({"infer"})
