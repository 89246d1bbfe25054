from __future__ import annotations

import calendar
import hashlib

import pytest

from server.auth.tokens import (
    Token,
    TokenPatch,
    TokenSpec,
    diagnose,
    generate,
    iso,
    month_of,
    parse_expiry,
    split,
    validate,
)
from server.errors import InvalidRequest

NOW = float(calendar.timegm((2026, 11, 23, 12, 0, 0)))


def test_generated_tokens_have_the_documented_shape_and_only_the_hash_is_kept() -> None:
    token_id, token, digest = generate()
    parts = split(token)
    assert parts is not None and parts[0] == token_id
    secret = parts[1]
    assert len(secret) == 43  # 43 base-62 digits: >= 256 bits
    assert token == f"cinfer_{token_id}_{secret}"
    assert digest == hashlib.sha256(secret.encode()).digest()
    assert secret.encode() not in digest
    assert len({generate()[1] for _ in range(200)}) == 200


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cinfer_",
        "cinfer_0123456789ab",
        "cinfer_0123456789ab_short",
        "cinfer_0123456789AB_" + "a" * 43,  # id is lower-case hex
        "Cinfer_0123456789ab_" + "a" * 43,
        "cinfer_0123456789ab_" + "a" * 42 + "-",
        "cinfer_0123456789ab_" + "a" * 44,
        "cinfer_0123456789ab_" + "a" * 43 + "\n",
    ],
)
def test_tokens_of_the_wrong_shape_do_not_split(text: str) -> None:
    assert split(text) is None
    assert diagnose(text).endswith("(expected cinfer_<12 hex digits>_<43 letters and digits>)")


SECRET = "a" * 43


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the token is empty"),
        ("A" * 300, "it has 300 characters, a token 63"),
        ("Cinfer_0123456789ab_" + SECRET, "it does not start with cinfer_"),
        ("ghp_0123456789ab_" + SECRET, "it does not start with cinfer_"),
        ("cinfer_0123456789ab" + SECRET, "no '_' between the id and the secret"),
        ("cinfer_", "no '_' between the id and the secret"),
        ("cinfer_0123_" + SECRET, "the id after cinfer_ has 4 characters, not 12"),
        ("cinfer_0123456789abc_" + SECRET, "the id after cinfer_ has 13 characters, not 12"),
        (
            "cinfer_0123456789AB_" + SECRET,
            "the id after cinfer_ is not 12 lower-case hex digits 0-9a-f",
        ),
        (
            "cinfer_0123456789xy_" + SECRET,
            "the id after cinfer_ is not 12 lower-case hex digits 0-9a-f",
        ),
        ("cinfer_000000000000_wrongsecret", "the secret after the id has 11 characters, not 43"),
        (
            "cinfer_0123456789ab_" + SECRET + "a",
            "the secret after the id has 44 characters, not 43",
        ),
        ("cinfer_0123456789ab_", "the secret after the id has 0 characters, not 43"),
        (
            "cinfer_0123456789ab_" + "a" * 42 + "-",
            "the secret after the id holds characters other than letters and digits",
        ),
        (
            "cinfer_0123456789ab_" + SECRET + "\n",
            "the secret after the id holds characters other than letters and digits",
        ),
    ],
)
def test_diagnose_says_which_part_is_wrong_without_echoing_it(text: str, problem: str) -> None:
    assert split(text) is None
    message = diagnose(text)
    assert message == f"{problem} (expected cinfer_<12 hex digits>_<43 letters and digits>)"
    assert "wrongsecret" not in message and SECRET not in message


def test_expiry_forms() -> None:
    day = 86400
    assert parse_expiry("30d", NOW) == NOW + 30 * day
    assert parse_expiry("12h", NOW) == NOW + 12 * 3600
    assert parse_expiry("2w", NOW) == NOW + 14 * day
    assert parse_expiry("never", NOW) is None
    # A date means "through that day": it expires when the UTC day ends.
    assert iso(parse_expiry("2027-01-31", NOW)) == "2027-02-01T00:00:00Z"
    assert iso(parse_expiry("2027-01-31T12:30:00Z", NOW)) == "2027-01-31T12:30:00Z"
    assert iso(parse_expiry("2027-01-31T12:30:00+02:00", NOW)) == "2027-01-31T10:30:00Z"
    assert iso(parse_expiry("2027-01-31T12:30:00", NOW)) == "2027-01-31T12:30:00Z"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-11-01", r"'2026-11-01' \(2026-11-02T00:00:00Z\) is in the past"),
        ("0d", "not in the future"),
        # Beyond what a date holds: once stored, every listing answered 500 (issue 12, finding 4).
        ("999999w", r"^expires '999999w' is beyond 9999-12-31T23:59:59Z"),
        ("9999-12-31", r"'9999-12-31' is beyond 9999-12-31T23:59:59Z"),
        ("9999-12-31T23:59:59-14:00", "is beyond 9999-12-31T23:59:59Z"),
        ("0001-01-01T00:00:00+14:00", r"\(before 0001-01-01T00:00:00Z\) is in the past"),
        ("0001-01-01T00:00:00-14:00", r"\(0001-01-01T14:00:00Z\) is in the past"),
        ("x" * 100, "^expires 'x{57}...' is not a date"),
        ("tomorrow", "is not a date .* a duration .* or 'never'"),
        ("2027-02-30", "is not a date"),
        ("30 days", "is not a date"),
    ],
)
def test_bad_expiries_are_named(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_expiry(text, NOW)


def test_the_latest_expiry_is_the_last_second_of_9999() -> None:
    assert iso(parse_expiry("9999-12-31T23:59:59Z", NOW)) == "9999-12-31T23:59:59Z"
    assert iso(parse_expiry("9999-12-30", NOW)) == "9999-12-31T00:00:00Z"
    assert iso(parse_expiry("9999-12-31T23:59:59+01:00", NOW)) == "9999-12-31T22:59:59Z"


@pytest.mark.parametrize("stamp", [606_595_677_039.0, -1e300, float("inf"), float("nan")])
def test_iso_shows_an_instant_no_date_names_as_none(stamp: float) -> None:
    assert iso(stamp) is None
    token = Token(id="0123456789ab", name="n", secret_hash=b"", created_at=NOW, expires_at=stamp)
    assert token.public(NOW)["expires_at"] is None


def test_months_are_utc_calendar_months() -> None:
    assert month_of(NOW) == (
        "2026-11",
        calendar.timegm((2026, 11, 1, 0, 0, 0)),
        calendar.timegm((2026, 12, 1, 0, 0, 0)),
    )
    december = calendar.timegm((2026, 12, 31, 23, 59, 59))
    assert month_of(december)[0] == "2026-12"
    assert iso(month_of(december)[2]) == "2027-01-01T00:00:00Z"
    assert month_of(december + 1)[0] == "2027-01"


def test_spec_normalises_lists() -> None:
    spec = TokenSpec(
        name=" web_frontend-1.2 ",
        scopes=["admin", "infer", "admin"],
        models=[" resnet* ", "resnet*", "iris"],
        ips=["10.0.0.0/8", "10.1.2.3", "2001:db8::/32", "::1", "10.1.2.3/32"],
    )
    assert spec.name == "web_frontend-1.2"
    assert spec.permissions == ["infer", "admin"]
    assert spec.models == ["resnet*", "iris"]
    assert spec.ips == ["10.0.0.0/8", "10.1.2.3", "2001:db8::/32", "::1"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"name": "Robert'); DROP TABLE tokens;--"},
            "name: token name .* must be 1-64 ASCII letters",
        ),
        ({"name": ""}, "name: token name '' must be"),
        ({"name": "x" * 65}, "must be 1-64"),
        ({"name": "0123456789ab"}, "looks like a token id"),
        ({"name": "a", "scopes": []}, "scopes: at least one scope"),
        (
            {"name": "a", "scopes": ["write"]},
            r"scopes\.0: Input should be 'infer', 'read' or 'admin'",
        ),
        ({"name": "a", "models": ["a b"]}, r"model pattern 'a b' must be"),
        ({"name": "a", "models": ["x;drop"]}, r"model pattern 'x;drop'"),
        (
            {"name": "a", "ips": ["10.0.0.1/8"]},
            r"'10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8\?",
        ),
        ({"name": "a", "ips": ["10.0.0.0/33"]}, r"'10.0.0.0/33' is not an IPv4 or IPv6 address"),
        ({"name": "a", "ips": ["example.com"]}, r"'example.com' is not an IPv4"),
        (
            {"name": "a", "rate_limit": -1},
            r"rate_limit: Input should be greater than or equal to 0",
        ),
        ({"name": "a", "remark": "x" * 1001}, r"remark is 1001 characters"),
        ({"name": "a", "remark": "bell\x07"}, r"remark contains control characters"),
        ({"name": "a", "colour": "red"}, r"colour: unknown field"),
    ],
)
def test_invalid_specs_name_field_and_value(data: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=f"invalid token: .*{message}"):
        validate(TokenSpec, data, "token")


@pytest.mark.parametrize(
    "name",
    [
        "\u0430dmin",  # Cyrillic a: it sat beside "admin"
        "\u0663\u0663\u0663\u0663",  # Arabic-Indic digits, which \\w took
        "\u216b",  # Roman numeral twelve
        "\u212aelvin",  # Kelvin sign, which NFC would have made a plain K
        "café",
        "東京",
        "admin\u200b",  # zero-width space
        "\uff41\uff44\uff4d\uff49\uff4e",  # full-width "admin"
    ],
)
def test_names_are_ascii(name: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^invalid token: name: token name .* 1-64 ASCII"):
        validate(TokenSpec, {"name": name}, "token")
    with pytest.raises(InvalidRequest, match=r"^invalid change: name: token name"):
        validate(TokenPatch, {"name": name}, "change")


@pytest.mark.parametrize("pattern", ["\u0430dmin*", "\uff49\uff52\uff49\uff53", "\u0663"])
def test_model_patterns_are_ascii(pattern: str) -> None:
    with pytest.raises(InvalidRequest, match=r"models: model pattern .* glob of ASCII"):
        validate(TokenSpec, {"name": "a", "models": [pattern]}, "token")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"rate_limit": "10"}, 'rate_limit: Input should be a valid integer, not "10"'),
        ({"rate_limit": True}, "rate_limit: Input should be a valid integer, not true"),
        ({"rate_limit": 10.0}, "rate_limit: Input should be a valid integer, not 10.0"),
        ({"monthly_quota": "5"}, 'monthly_quota: Input should be a valid integer, not "5"'),
        ({"monthly_quota": False}, "monthly_quota: Input should be a valid integer, not false"),
        ({"scopes": "admin"}, 'scopes: Input should be a valid list, not "admin"'),
        ({"scopes": [True]}, "scopes.0: Input should be 'infer', 'read' or 'admin', not true"),
        ({"models": "iris"}, "models: Input should be a valid list"),
        ({"models": [1]}, "models.0: Input should be a valid string, not 1"),
        ({"ips": [10]}, "ips.0: Input should be a valid string, not 10"),
        ({"ips": {"10.0.0.0/8": 1}}, "ips: Input should be a valid list"),
        ({"remark": 5}, "remark: Input should be a valid string, not 5"),
        ({"expires": 30}, "expires: Input should be a valid string, not 30"),
        ({"name": 5}, "name: Input should be a valid string, not 5"),
        ({"name": ["a"]}, "name: Input should be a valid string"),
    ],
)
def test_every_field_has_its_json_type(data: dict, message: str) -> None:
    for model, what in ((TokenSpec, "token"), (TokenPatch, "change")):
        with pytest.raises(InvalidRequest) as refused:
            validate(model, {"name": "a", **data}, what)
        assert message in str(refused.value)
    with pytest.raises(InvalidRequest, match=r"status: Input should be 'active'.*, not true"):
        validate(TokenPatch, {"status": True}, "change")


def test_remarks_keep_any_printable_text() -> None:
    remark = 'Robert\'); DROP TABLE tokens;-- 🚀 ünïcode\n"quoted" \\ %s ?'
    assert TokenSpec(name="a", remark=remark).remark == remark


def test_patch_knows_which_fields_were_given() -> None:
    patch = validate(TokenPatch, {"remark": "", "models": []}, "change")
    assert patch.model_fields_set == {"remark", "models"}


def test_public_form_never_holds_the_hash() -> None:
    token = Token(id="0123456789ab", name="n", secret_hash=b"\x01" * 32, created_at=NOW)
    shown = token.public(NOW)
    assert "secret_hash" not in shown and b"\x01" not in repr(shown).encode()
    assert shown["created_at"] == "2026-11-23T12:00:00Z" and shown["expires_at"] is None
    assert "secret_hash" not in repr(token)
