"""What every console page shares: templates, security headers, the signed-in visitor, CSRF,
cookies and redirects that keep to the console's prefix.

The console is a door like the REST API: it calls the core (the DataPlane, the guard, the
accounts) directly and is not an API client. Its pages need a console session, never an API
token; an API token sent to them is ignored.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import jinja2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .. import __version__
from ..auth.accounts import Account, Accounts
from ..errors import Forbidden, InvalidRequest
from ..http.access import Proxies
from .sessions import COOKIE, FORM_COOKIE, Session, Sessions

PREFIX = "/console"

#: Sent with every page: nothing inline, nothing from elsewhere, never in a frame.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


@dataclass(frozen=True)
class Visitor:
    """A signed-in console user: the session and the account as the database has it now."""

    session: Session
    account: Account

    @property
    def admin(self) -> bool:
        return self.account.admin


def _since(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp)) + " UTC"


class Web:
    """The console's shared context: its templates, sessions and accounts."""

    def __init__(self, accounts: Accounts, proxies: Proxies) -> None:
        self.accounts = accounts
        self.proxies = proxies
        self.sessions: Sessions | None = None
        """Set when the console starts (the signing key is in the database)."""
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("server.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["since"] = _since
        self.templates.filters["when"] = _when

    @property
    def signer(self) -> Sessions:
        assert self.sessions is not None, "the console has not started"
        return self.sessions

    # -- who is asking -------------------------------------------------------------------

    async def visitor(self, request: Request) -> Visitor | None:
        """The signed-in user, or None (no cookie, a forged or expired one, or a session
        ended since by a logout, a password change or a role change)."""
        session = self.signer.read(request.cookies.get(COOKIE))
        if session is None:
            return None
        account = await self.accounts.find(session.username)
        if account is None or account.session_version != session.version:
            return None
        return Visitor(session, account)

    def address(self, request: Request) -> str:
        return self.proxies.address(request.scope)

    def check_csrf(self, visitor: Visitor, submitted: str | None) -> None:
        """403 unless `submitted` (a form field or the X-CSRF-Token header) is the session's."""
        if not submitted or not secrets.compare_digest(submitted, visitor.session.csrf):
            raise Forbidden("missing or wrong CSRF token: reload the page and try again")

    # -- answers -------------------------------------------------------------------------

    def base(self, request: Request) -> str:
        """The console's URL path, behind whatever prefix the server is served under."""
        return str(request.scope.get("root_path", "")) + PREFIX

    def render(
        self,
        request: Request,
        template: str,
        visitor: Visitor | None = None,
        status: int = 200,
        form_token: str | None = None,
        **context: Any,
    ) -> HTMLResponse:
        html = self.templates.get_template(template).render(
            base=self.base(request),
            root=str(request.scope.get("root_path", "")),
            visitor=visitor,
            csrf=visitor.session.csrf if visitor else form_token,
            version=__version__,
            **{"page": "", **context},
        )
        response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
        if visitor is not None:
            touched = self.signer.touched(visitor.session)
            if touched is not None:
                self.set_session(request, response, touched)
        return response

    def redirect(self, request: Request, path: str) -> RedirectResponse:
        return RedirectResponse(self.base(request) + path, status_code=303)

    def redirect_to(self, path: str) -> RedirectResponse:
        """A redirect to a path of the server's own beyond the console (``/docs``)."""
        return RedirectResponse(path, status_code=303)

    def cookie_path(self, request: Request) -> str:
        return self.base(request)

    def set_session(self, request: Request, response: Response, cookie: str) -> None:
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(self.signer.absolute_s),
            path=self.cookie_path(request),
            httponly=True,
            samesite="strict",
            secure=self.proxies.https(request.scope),
        )

    def clear_session(self, request: Request, response: Response) -> None:
        response.delete_cookie(
            COOKIE,
            path=self.cookie_path(request),
            httponly=True,
            samesite="strict",
            secure=self.proxies.https(request.scope),
        )

    def form(self, request: Request) -> tuple[str, str]:
        """A CSRF token for a form shown before sign-in, and the cookie that proves it."""
        return self.signer.form_token(request.cookies.get(FORM_COOKIE))

    def form_page(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        token, cookie = self.form(request)
        response = self.render(request, template, status=status, form_token=token, **context)
        response.set_cookie(
            FORM_COOKIE,
            cookie,
            path=self.cookie_path(request),
            httponly=True,
            samesite="strict",
            secure=self.proxies.https(request.scope),
        )
        return response

    def form_ok(self, request: Request, submitted: str | None) -> bool:
        return self.signer.form_ok(request.cookies.get(FORM_COOKIE), submitted)


async def read_form(
    request: Request, limit: int, what: str, files: int = 0, fields: int = 50
) -> FormData:
    """A console POST's urlencoded or multipart form: 400 past `limit` bytes (`what` names the
    form in the message), past `files` files or `fields` fields, or when it cannot be parsed."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise InvalidRequest(f"{what} is at most {limit} bytes")
    try:
        return await request.form(max_files=files, max_fields=fields)
    except Exception as exc:  # python-multipart's and starlette's parse errors
        raise InvalidRequest(f"the form could not be read: {exc}") from exc
