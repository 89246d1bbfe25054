"""Session cookies, form tokens and the sign-in throttle (server/console/sessions.py)."""

from __future__ import annotations

from server.auth.accounts import Account
from server.console.sessions import FREE, MAX_DELAY_S, TOUCH_S, Sessions, Throttle

KEY = b"k" * 32
ACCOUNT = Account("root", "admin", 3, 0.0, 0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_ends_when_idle_and_at_its_absolute_limit() -> None:
    clock = Clock()
    sessions = Sessions(KEY, idle_s=600, absolute_s=3600, clock=clock)
    cookie, session = sessions.issue(ACCOUNT)
    assert sessions.read(cookie) == session
    assert (session.username, session.version) == ("root", 3)
    clock.now += 601
    assert sessions.read(cookie) is None  # idle too long
    # Used every 5 minutes, a session still ends an hour after sign-in.
    clock.now = 1_000_000.0
    for _ in range(11):
        clock.now += 300
        read = sessions.read(cookie)
        assert read is not None
        cookie = sessions.touched(read) or cookie
    clock.now += 301
    assert sessions.read(cookie) is None


def test_touch_re_signs_at_most_once_a_minute() -> None:
    clock = Clock()
    sessions = Sessions(KEY, idle_s=600, absolute_s=3600, clock=clock)
    cookie, session = sessions.issue(ACCOUNT)
    clock.now += TOUCH_S / 2
    assert sessions.touched(session) is None
    clock.now += TOUCH_S
    touched = sessions.touched(session)
    assert touched is not None and touched != cookie
    read = sessions.read(touched)
    assert read is not None and read.active == clock.now and read.csrf == session.csrf


def test_forged_cookies_and_other_keys_are_refused() -> None:
    sessions = Sessions(KEY, idle_s=600, absolute_s=3600)
    cookie, _ = sessions.issue(ACCOUNT)
    # A changed first character: the last one of a base64 text may be only padding bits.
    assert sessions.read(("B" if cookie[0] == "A" else "A") + cookie[1:]) is None
    signature = cookie.rindex(".") + 1
    forged = (
        cookie[:signature] + ("B" if cookie[signature] == "A" else "A") + cookie[signature + 1 :]
    )
    assert sessions.read(forged) is None
    assert Sessions(b"x" * 32, idle_s=600, absolute_s=3600).read(cookie) is None
    assert sessions.read("") is None and sessions.read("garbage") is None
    # A form token's cookie is not a session, nor a session a form token.
    _, form = sessions.form_token(None)
    assert sessions.read(form) is None
    assert not sessions.form_ok(cookie, cookie)


def test_form_tokens_match_their_cookie_only() -> None:
    sessions = Sessions(KEY, idle_s=600, absolute_s=3600)
    token, cookie = sessions.form_token(None)
    assert sessions.form_ok(cookie, token)
    assert not sessions.form_ok(cookie, token + "x")
    assert not sessions.form_ok(None, token) and not sessions.form_ok(cookie, None)
    again, _ = sessions.form_token(cookie)
    assert again == token  # a second tab shares it


def test_the_throttle_delay_grows_after_the_free_failures() -> None:
    clock = Clock()
    throttle = Throttle(clock=clock)
    keys = ("account:root", "address:10.0.0.1")
    for _ in range(FREE):
        assert throttle.retry_after(keys) == 0
        throttle.failed(keys)
    assert throttle.retry_after(keys) == 2.0
    clock.now += 2.0
    assert throttle.retry_after(keys) == 0
    throttle.failed(keys)
    assert throttle.retry_after(keys) == 4.0
    for _ in range(20):
        throttle.failed(keys)
    assert throttle.retry_after(keys) == MAX_DELAY_S
    assert throttle.retry_after(("account:other", "address:10.0.0.2")) == 0
    assert throttle.retry_after(("account:other", "address:10.0.0.1")) == MAX_DELAY_S
    throttle.succeeded(keys)
    assert throttle.retry_after(keys) == 0
