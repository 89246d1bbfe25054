"""Console sessions: signed cookies, their expiry, CSRF tokens and sign-in throttling.

A session is a cookie signed with the server's key (itsdangerous; the key is generated on
first start and kept in the database, auth/accounts.py, so every replica on one database
accepts the others' cookies). It carries the username, the account's session version, when
it was issued and when it was last used, and the session's CSRF token. It ends:

- `idle_s` after its last use (each use more than `TOUCH_S` after the previous one re-signs
  the cookie with the new time), and `absolute_s` after it was issued, whatever the use;
- when the account's session version moves on (logout, a password or role change), which
  the console checks on every request against the database.

Forms shown before a session exists (sign-in, first-run set-up) carry a CSRF token of their
own: a random value in a signed cookie and the same value in the form.

`Throttle` counts failed sign-ins per account and per address: after `FREE` failures each
further attempt waits 2, 4, 8 ... seconds (at most `MAX_DELAY_S`), answered 429 meanwhile.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache
from itsdangerous import BadSignature, URLSafeSerializer

from ..auth.accounts import Account

COOKIE = "cinfer_session"
FORM_COOKIE = "cinfer_form"
TOUCH_S = 60.0
"""A session's last-use time is re-signed at most this often."""

FREE = 5
"""Failed sign-ins (per account, per address) before attempts are delayed."""
MAX_DELAY_S = 300.0
MAX_TRACKED = 10_000
"""Accounts and addresses whose failures are remembered (least recently failed dropped)."""


@dataclass(frozen=True)
class Session:
    username: str
    version: int
    issued: float
    active: float
    csrf: str


class Sessions:
    """Issues and reads session cookies signed with `key`."""

    def __init__(
        self,
        key: bytes,
        idle_s: float,
        absolute_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self.clock = clock
        self._sessions = URLSafeSerializer(key, salt="cinfer.console.session")
        self._forms = URLSafeSerializer(key, salt="cinfer.console.form")

    def issue(self, account: Account) -> tuple[str, Session]:
        now = self.clock()
        session = Session(account.username, account.session_version, now, now, _token())
        return self._dump(session), session

    def read(self, cookie: str | None) -> Session | None:
        """The session `cookie` holds, or None when it is missing, forged or expired."""
        if not cookie:
            return None
        try:
            data: Any = self._sessions.loads(cookie)
            session = Session(
                str(data["u"]), int(data["v"]), float(data["i"]), float(data["a"]), str(data["c"])
            )
        except (BadSignature, KeyError, TypeError, ValueError):
            return None
        now = self.clock()
        if now - session.issued > self.absolute_s or now - session.active > self.idle_s:
            return None
        return session

    def touched(self, session: Session) -> str | None:
        """A cookie with the last use moved to now, when it is due for one."""
        now = self.clock()
        if now - session.active < TOUCH_S:
            return None
        return self._dump(
            Session(session.username, session.version, session.issued, now, session.csrf)
        )

    def _dump(self, session: Session) -> str:
        return str(
            self._sessions.dumps(
                {
                    "u": session.username,
                    "v": session.version,
                    "i": session.issued,
                    "a": session.active,
                    "c": session.csrf,
                }
            )
        )

    # -- forms before a session ------------------------------------------------------------

    def form_token(self, cookie: str | None) -> tuple[str, str]:
        """(the token a form carries, the cookie that proves it): the cookie's own token when
        it holds a valid one, so that two tabs share it."""
        token = self._form_value(cookie) or _token()
        return token, str(self._forms.dumps(token))

    def form_ok(self, cookie: str | None, submitted: str | None) -> bool:
        expected = self._form_value(cookie)
        return bool(expected and submitted) and secrets.compare_digest(
            str(expected), str(submitted)
        )

    def _form_value(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            value = self._forms.loads(cookie)
        except BadSignature:
            return None
        return value if isinstance(value, str) else None


def _token() -> str:
    return secrets.token_urlsafe(24)


class Throttle:
    """Failed sign-ins per key (``account:<name>``, ``address:<ip>``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failures: LRUCache[str, tuple[int, float]] = LRUCache(MAX_TRACKED)

    def retry_after(self, keys: Iterable[str]) -> float:
        """Seconds until an attempt for `keys` may be made (0: now)."""
        now = self.clock()
        wait = 0.0
        for key in keys:
            count, last = self._failures.get(key, (0, 0.0))
            if count >= FREE:
                delay = min(MAX_DELAY_S, 2.0 ** (count - FREE + 1))
                wait = max(wait, last + delay - now)
        return wait

    def failed(self, keys: Iterable[str]) -> None:
        now = self.clock()
        for key in keys:
            count, _ = self._failures.get(key, (0, 0.0))
            self._failures[key] = (count + 1, now)

    def succeeded(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)
