"""The console's API tokens pages: every token with its limits, use and state, and a chart of
requests per day; create one (its secret shown once), pause, resume, revoke, delete; one
token's page, with its own chart and a form that changes its limits.

It works on the same token records as `cinfer tokens` and ``/admin/tokens`` (auth/store.py),
changes them the same way (a `TokenPatch` through `Database.update`, as PATCH /admin/tokens)
and tells the running guard at once, so a revoked token, or a lower limit, holds on the API
from the next request. Viewers see the list; only admins change it. Every change is in the
audit log.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..auth.guard import Guard
from ..auth.store import Database
from ..auth.tokens import (
    PERMISSIONS,
    Status,
    Token,
    TokenPatch,
    TokenSpec,
    iso,
    parse_expiry,
    validate,
)
from ..errors import Conflict, Forbidden, InvalidRequest
from . import daily
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


def _limits(form: dict[str, str]) -> dict[str, Any]:
    """What the create and the edit form share, as the API's JSON would have it."""
    fields: dict[str, Any] = {
        "remark": form.get("remark", ""),
        "scopes": [p for p in PERMISSIONS if form.get(f"scope_{p}")],
        "models": _list(form.get("models", "")),
        "ips": _list(form.get("ips", "")),
        "rate_limit": _count(form, "rate_limit"),
        "monthly_quota": _count(form, "monthly_quota"),
    }
    if not fields["scopes"]:
        raise InvalidRequest("a token needs at least one permission: infer, read or admin")
    return fields


def spec_from_form(form: dict[str, str]) -> TokenSpec:
    """The create form as a TokenSpec, checked like the API checks its JSON."""
    fields = {"name": form.get("name", "").strip(), **_limits(form)}
    if form.get("expires", "").strip():
        fields["expires"] = form["expires"].strip()
    spec: TokenSpec = validate(TokenSpec, fields, "token")
    return spec


def form_of(token: Token) -> dict[str, str]:
    """The edit form's fields as `token` has them (what `patch_from_form` reads back)."""
    return {
        "remark": token.remark,
        **{f"scope_{p}": "1" for p in token.permissions},
        "models": ", ".join(token.models),
        "ips": ", ".join(token.ips),
        "rate_limit": str(token.rate_limit),
        "monthly_quota": str(token.monthly_quota),
        "expires": iso(token.expires_at) or "never",
    }


def patch_from_form(form: dict[str, str], token: Token, now: float) -> TokenPatch:
    """The edit form as a TokenPatch holding only what differs from `token`, checked like
    the API checks its JSON (an InvalidRequest naming the field otherwise)."""
    full: TokenPatch = validate(TokenPatch, _limits(form), "token change")
    before = {
        "remark": token.remark,
        "permissions": sorted(token.permissions, key=PERMISSIONS.index),
        "models": list(token.models),
        "ips": list(token.ips),
        "rate_limit": token.rate_limit,
        "monthly_quota": token.monthly_quota,
    }
    changed = {k: getattr(full, k) for k, v in before.items() if getattr(full, k) != v}
    expires = form.get("expires", "").strip() or "never"
    # As shown: kept, even when past. Else parsed here too, not only in Database.update, to
    # leave out the same expiry written another way.
    shown = iso(token.expires_at) or "never"
    if expires != shown and parse_expiry(expires, now) != token.expires_at:
        changed["expires"] = expires
    patch: TokenPatch = validate(TokenPatch, changed, "token change")
    return patch


class TokenPages:
    """GET /console/tokens, POST /console/tokens, GET and POST /console/tokens/{ref},
    POST /console/tokens/{ref}/{action}."""

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
        days, rows = await self._usage(None)
        return self.web.render(
            request, "tokens.html", visitor, status,
            page="tokens", tokens=tokens, error=error, created=created,
            permissions=PERMISSIONS, enforced=self.guard is not None,
            chart=daily.per_token(rows, days),
        )  # fmt: skip

    async def detail(
        self,
        request: Request,
        visitor: Visitor,
        status: int = 200,
        error: str = "",
        form: dict[str, str] | None = None,
    ) -> Response:
        """One token: its fields (never a secret), its chart, and the form that edits it."""
        token = await self.database.find(request.path_params["ref"])
        days, rows = await self._usage(token.id)
        return self.web.render(
            request, "token.html", visitor, status,
            page="tokens", token=self._shown(token), error=error,
            form=form_of(token) if form is None else form,
            flash=request.query_params.get("done", ""),
            permissions=PERMISSIONS, enforced=self.guard is not None,
            chart=daily.requests_and_errors(rows, days),
        )  # fmt: skip

    async def update(self, request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        """The edit form applied as PATCH /admin/tokens/{ref} applies its body."""
        self._may_change(request, visitor, form)
        token = await self.database.find(request.path_params["ref"])
        try:
            changes = patch_from_form(form, token, self.database.clock())
            if changes.model_fields_set:
                token = await self.database.update(token.id, changes)
        except (InvalidRequest, Conflict) as exc:  # shown on the form, nothing written
            return await self.detail(request, visitor, exc.status_code, exc.message, form)
        if not changes.model_fields_set:
            return self.web.redirect(request, f"/tokens/{token.id}?done=unchanged")
        await self._changed()
        changed = ", ".join(sorted(changes.model_fields_set))
        await self._audit(request, visitor, "token.update", token, changed)
        return self.web.redirect(request, f"/tokens/{token.id}?done=updated")

    async def _usage(self, token: str | None) -> tuple[list[str], list[dict[str, Any]]]:
        """The chart's days, and the usage log's rows for them (all tokens' or one's)."""
        if self.guard is not None:
            await self.guard.flush()  # the requests of a moment ago are counted in memory
        days, since, until = daily.window(self.database.clock())
        return days, await self.database.usage(since, until, token=token)

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
