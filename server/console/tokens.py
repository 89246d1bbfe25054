"""The console's API tokens page: every token with its limits, use and state; create one (its
secret shown once), pause, resume, revoke, delete.

It works on the same token records as `cinfer tokens` and ``/admin/tokens`` (auth/store.py)
and tells the running guard at once, so a revoked token is refused by the API from the next
request. Viewers see the list; only admins change it. Every change is in the audit log.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..auth.guard import Guard
from ..auth.store import Database
from ..auth.tokens import PERMISSIONS, Status, Token, TokenSpec, validate
from ..errors import Conflict, Forbidden, InvalidRequest
from .web import Visitor, Web

ACTIONS: dict[str, Status | None] = {
    "pause": "paused",
    "resume": "active",
    "revoke": "revoked",
    "delete": None,
}


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _count(form: dict[str, str], key: str) -> int:
    text = form.get(key, "").strip() or "0"
    try:
        return int(text)
    except ValueError:
        raise InvalidRequest(f"{key.replace('_', ' ')}: {text!r} is not a whole number") from None


def spec_from_form(form: dict[str, str]) -> TokenSpec:
    """The create form as a TokenSpec, checked like the API checks its JSON."""
    fields: dict[str, Any] = {
        "name": form.get("name", "").strip(),
        "remark": form.get("remark", ""),
        "scopes": [p for p in PERMISSIONS if form.get(f"scope_{p}")],
        "models": _list(form.get("models", "")),
        "ips": _list(form.get("ips", "")),
        "rate_limit": _count(form, "rate_limit"),
        "monthly_quota": _count(form, "monthly_quota"),
    }
    if form.get("expires", "").strip():
        fields["expires"] = form["expires"].strip()
    if not fields["scopes"]:
        raise InvalidRequest("a token needs at least one permission: infer, read or admin")
    spec: TokenSpec = validate(TokenSpec, fields, "token")
    return spec


class TokenPages:
    """GET /console/tokens, POST /console/tokens, POST /console/tokens/{ref}/{action}."""

    def __init__(self, web: Web, database: Database, guard: Guard | None) -> None:
        self.web = web
        self.database = database
        self.guard = guard

    def _shown(self, token: Token) -> dict[str, Any]:
        now = self.database.clock()
        if self.guard is not None:
            token = self.guard.current(token)
        shown = token.public(now)
        quota = token.monthly_quota
        shown["left"] = max(0, quota - shown["used_this_month"]) if quota else None
        return shown

    async def listing(
        self,
        request: Request,
        visitor: Visitor,
        status: int = 200,
        error: str = "",
        created: tuple[dict[str, Any], str] | None = None,
    ) -> Response:
        tokens = [self._shown(t) for t in await self.database.tokens()]
        return self.web.render(
            request, "tokens.html", visitor, status,
            page="tokens", tokens=tokens, error=error, created=created,
            permissions=PERMISSIONS, enforced=self.guard is not None,
        )  # fmt: skip

    async def create(self, request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        self._may_change(request, visitor, form)
        try:
            spec = spec_from_form(form)
            token, plaintext = await self.database.create(spec)
        except (InvalidRequest, Conflict) as exc:  # shown on the form, nothing written
            return await self.listing(request, visitor, exc.status_code, exc.message)
        await self._changed()
        await self._audit(request, visitor, "token.create", token, ", ".join(spec.permissions))
        return await self.listing(request, visitor, 201, created=(self._shown(token), plaintext))

    async def act(self, request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        self._may_change(request, visitor, form)
        ref, action = request.path_params["ref"], request.path_params["action"]
        if action not in ACTIONS:
            raise InvalidRequest(f"no token action {action!r}: {', '.join(ACTIONS)}")
        status = ACTIONS[action]
        if status is None:
            token = await self.database.delete(ref)
        else:
            token = await self.database.set_status(ref, status)
        await self._changed()
        await self._audit(request, visitor, f"token.{action}", token)
        return self.web.redirect(request, "/tokens")

    def _may_change(self, request: Request, visitor: Visitor, form: dict[str, str]) -> None:
        if not visitor.admin:
            raise Forbidden("a viewer account cannot change API tokens")
        self.web.check_csrf(visitor, form.get("csrf") or request.headers.get("x-csrf-token"))

    async def _changed(self) -> None:
        if self.guard is not None:
            await self.guard.reload()  # refused or admitted from the next request

    async def _audit(
        self, request: Request, visitor: Visitor, action: str, token: Token, detail: str = ""
    ) -> None:
        await self.web.accounts.audit(
            visitor.account.username,
            action,
            f"token {token.name} ({token.id})",
            detail,
            self.web.address(request),
        )
