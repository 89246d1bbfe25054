"""``/admin``: token management and usage over REST, the `admin` permission's API.

    POST   /admin/tokens                     create; the response holds the token, once
    GET    /admin/tokens                     list (never a secret)
    GET    /admin/tokens/{ref}               one token, by id or name
    PATCH  /admin/tokens/{ref}               change name, remark, scopes, models, ips, limits,
                                             expires, status
    DELETE /admin/tokens/{ref}
    POST   /admin/tokens/{ref}/pause|resume|revoke|reset-usage
    POST   /admin/tokens/{ref}/extend        {"expires": "2027-01-31" | "30d" | "never"}
    GET    /admin/usage?since=&until=&token=&model=
                                             requests and errors per token, model and UTC day;
                                             requests refused without a token per day,
                                             address and status

The same operations as `cinfer tokens` (cli/tokens.py), over the same Database; a change made
here is in force for the next request (the Guard reloads at once).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..auth import rights
from ..auth.accounts import Accounts
from ..auth.grant import Grant
from ..auth.guard import Guard
from ..auth.tokens import Token, TokenPatch, TokenSpec, validate
from ..errors import Forbidden, InvalidRequest, NotFound, show
from .asgi import ADDRESS_KEY, GRANT_KEY
from .endpoints import read_body
from .routes import Access, Route

MAX_BODY = 64 * 1024
DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")

Endpoint = Callable[[Request], Awaitable[Response]]


class Admin:
    """The /admin routes over the guard's database (`admin` permission)."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.database = guard.database
        self.accounts = Accounts(guard.database)

    def _token(self, token: Token, status: int = 200, plaintext: str | None = None) -> Response:
        body = self.guard.current(token).public(self.guard.clock())
        if plaintext is not None:
            body = {"token": plaintext, **body}
        return _json(body, status)

    async def _audit(self, request: Request, action: str, token: Token, detail: str = "") -> None:
        """The change in the audit log (docs/console.md), by the token that made it."""
        caller = _caller(request)
        await self.accounts.audit(
            f"token {caller.name}" if caller is not None else "api",
            action,
            f"token {token.name} ({token.id})",
            detail,
            str(request.scope.get(ADDRESS_KEY, "")),
        )

    async def create(self, request: Request) -> Response:
        spec = validate(TokenSpec, await _body(request), "token")
        caller = _caller(request)
        if caller is not None:
            blank = Token(id="", name=spec.name, secret_hash=b"")
            _within(caller, rights.proposed(spec, blank, self.guard.clock()))
        token, plaintext = await self.database.create(spec)
        await self.guard.reload()
        await self._audit(request, "token.create", token, ", ".join(spec.permissions))
        return self._token(token, 201, plaintext)

    async def list_tokens(self, request: Request) -> Response:
        now = self.guard.clock()
        caller = _caller(request)
        tokens = await self.database.tokens()
        if caller is not None and not rights.unlimited(caller):
            tokens = [t for t in tokens if rights.beyond(caller, t) is None]
        return _json({"tokens": [self.guard.current(t).public(now) for t in tokens]})

    async def _visible(self, request: Request) -> Token:
        """The token the path names, if the caller may manage it (else 404, as if unknown:
        a token beyond the caller's rights is none of its business)."""
        ref = request.path_params["ref"]
        token = await self.database.find(ref)
        caller = _caller(request)
        if caller is not None and rights.beyond(caller, token) is not None:
            raise NotFound(f"no token with id or name {ref!r}")
        return token

    async def show(self, request: Request) -> Response:
        return self._token(await self._visible(request))

    async def patch(self, request: Request) -> Response:
        changes = validate(TokenPatch, await _body(request), "token change")
        await self._change(request, changes)
        token = await self.database.update(request.path_params["ref"], changes)
        await self.guard.reload()
        changed = ", ".join(sorted(changes.model_fields_set))
        await self._audit(request, "token.update", token, changed)
        return self._token(token)

    async def _change(self, request: Request, changes: TokenPatch) -> None:
        """Refuse (403) a change that would give the token rights beyond the caller's."""
        token = await self._visible(request)
        caller = _caller(request)
        if caller is not None:
            _within(caller, rights.proposed(changes, token, self.guard.clock()))

    async def delete(self, request: Request) -> Response:
        await self._visible(request)
        token = await self.database.delete(request.path_params["ref"])
        await self.guard.reload()
        await self._audit(request, "token.delete", token)
        return _json({"deleted": token.id, "name": token.name})

    def _status_change(self, status: Any) -> Endpoint:
        async def change(request: Request) -> Response:
            await self._visible(request)
            token = await self.database.set_status(request.path_params["ref"], status)
            await self.guard.reload()
            verb = {"paused": "pause", "active": "resume", "revoked": "revoke"}[status]
            await self._audit(request, f"token.{verb}", token)  # the console's words
            return self._token(token)

        return change

    async def reset_usage(self, request: Request) -> Response:
        await self._visible(request)
        caller = _caller(request)
        if caller is not None and caller.quota:
            raise Forbidden(
                f"API token {caller.name!r} has a monthly quota ({caller.quota}) and may not "
                "reset usage: that would give quota back"
            )
        token = await self.guard.reset_usage(request.path_params["ref"])
        await self._audit(request, "token.reset-usage", token)
        return self._token(token)

    async def extend(self, request: Request) -> Response:
        body = await _body(request)
        expires = body.get("expires")
        if set(body) != {"expires"} or not isinstance(expires, str):
            raise InvalidRequest('extend takes {"expires": "2027-01-31" | "30d" | "never"}')
        await self._change(request, TokenPatch(expires=expires))
        token = await self.database.extend(request.path_params["ref"], expires)
        await self.guard.reload()
        await self._audit(request, "token.extend", token, expires)
        return self._token(token)

    async def usage(self, request: Request) -> Response:
        query = request.query_params
        unknown = set(query) - {"since", "until", "token", "model"}
        if unknown:
            raise InvalidRequest(f"unknown query parameter(s) {', '.join(sorted(unknown))}")
        now = self.guard.clock()
        days = self.guard.settings.log_retention_days
        since = day_start(query["since"], "since") if "since" in query else now - days * 86400
        until = day_start(query["until"], "until") + 86400 if "until" in query else now + 86400
        await self.guard.flush()
        rows = await self.database.usage(
            since, until, token=query.get("token"), model=query.get("model")
        )
        caller = _caller(request)
        if caller is not None and not rights.unlimited(caller):
            # A limited admin sees the usage of the tokens it may manage, and no addresses of
            # strangers' refusals.
            mine = {t.id for t in await self.database.tokens() if rights.beyond(caller, t) is None}
            return _json({"usage": [r for r in rows if r["token_id"] in mine],
                          "refused_without_token": []})  # fmt: skip
        refused = await self.database.refused(since, until)
        return _json({"usage": rows, "refused_without_token": refused})

    def routes(self) -> list[Route]:
        one = "/admin/tokens/{ref}"
        token = (400, 404)
        routes = [
            Route("POST", "/admin/tokens", self.create, Access.ADMIN,
                  "Create a token; the answer holds it, once", body=TokenSpec, status=201,
                  answer=dict[str, Any], errors=(400, 409)),
            Route("GET", "/admin/tokens", self.list_tokens, Access.ADMIN,
                  "Every token (never a secret)", answer=dict[str, Any]),
            Route("GET", one, self.show, Access.ADMIN, "One token, by id or name",
                  answer=dict[str, Any], errors=token),
            Route("PATCH", one, self.patch, Access.ADMIN,
                  "Change name, remark, scopes, models, ips, limits, expires or status",
                  body=TokenPatch, answer=dict[str, Any], errors=(*token, 409)),
            Route("DELETE", one, self.delete, Access.ADMIN, "Delete a token",
                  answer=dict[str, Any], errors=token),
        ]  # fmt: skip
        for verb, status in (("pause", "paused"), ("resume", "active"), ("revoke", "revoked")):
            routes.append(
                Route("POST", f"{one}/{verb}", self._status_change(status), Access.ADMIN,
                      f"Set the token's status to {status}", answer=dict[str, Any],
                      errors=token)
            )  # fmt: skip
        return [
            *routes,
            Route("POST", f"{one}/reset-usage", self.reset_usage, Access.ADMIN,
                  "Set this month's count to 0", answer=dict[str, Any], errors=token),
            Route("POST", f"{one}/extend", self.extend, Access.ADMIN,
                  'Change the expiry: {"expires": "2027-01-31" | "30d" | "never"}',
                  answer=dict[str, Any], errors=token),
            Route("GET", "/admin/usage", self.usage, Access.ADMIN,
                  "Requests and errors per token, model and UTC day (?since=&until=&token="
                  "&model=)", answer=dict[str, Any], errors=(400,),
                  query=("since", "until", "token", "model")),
        ]  # fmt: skip


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type="application/json")


async def _body(request: Request) -> Any:
    """The JSON body (an empty body reads as {})."""
    body = await read_body(request, MAX_BODY, f"admin request body exceeds {MAX_BODY} bytes")
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {type(data).__name__}")
    return data


def day_start(text: str, name: str) -> float:
    """The UTC midnight starting the day `text` (``2026-11-30``) names; years 0001 to 9999,
    what a date holds (year 0 used to reach calendar.timegm and answer 500: issue 12,
    finding 4)."""
    found = DAY.fullmatch(text)
    try:
        if found is None:
            raise ValueError
        year, month, day = (int(g) for g in found.groups())
        if not (
            1 <= year <= 9999
            and 1 <= month <= 12
            and 1 <= day <= calendar.monthrange(year, month)[1]
        ):
            raise ValueError
    except ValueError as exc:
        raise InvalidRequest(
            f"{name}={show(text)} is not a date like 2026-11-30 (years 0001 to 9999)"
        ) from exc
    return float(calendar.timegm((year, month, day, 0, 0, 0)))


def _caller(request: Request) -> Grant | None:
    """The token making the request (None with authentication off)."""
    grant: Grant | None = request.scope.get(GRANT_KEY)
    return grant


def _within(caller: Grant, token: Token) -> None:
    reason = rights.beyond(caller, token)
    if reason is not None:
        raise Forbidden(reason)
