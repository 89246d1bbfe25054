"""``/admin``: token management and usage over REST, the `admin` scope's API.

    POST   /admin/tokens                     create; the response holds the token, once
    GET    /admin/tokens                     list (never a secret)
    GET    /admin/tokens/{ref}               one token, by id or name
    PATCH  /admin/tokens/{ref}               change name, remark, scopes, models, ips, limits,
                                             expires, status
    DELETE /admin/tokens/{ref}
    POST   /admin/tokens/{ref}/pause|resume|revoke|reset-usage
    POST   /admin/tokens/{ref}/extend        {"expires": "2027-01-31" | "30d" | "never"}
    GET    /admin/usage?since=&until=&token=&model=
                                             requests and errors per token, model and UTC day

The same operations as `cinfer tokens` (cli.py), over the same Database; a change made here is
in force for the next request (the Guard reloads at once).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..auth.guard import Guard
from ..auth.tokens import Token, TokenPatch, TokenSpec, validate
from ..errors import InvalidRequest, PayloadTooLarge

MAX_BODY = 64 * 1024
DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")

Endpoint = Callable[[Request], Awaitable[Response]]


def routes(guard: Guard) -> list[Route]:
    database = guard.database

    def token_json(token: Token, status: int = 200, plaintext: str | None = None) -> Response:
        body = guard.current(token).public(guard.clock())
        if plaintext is not None:
            body = {"token": plaintext, **body}
        return _json(body, status)

    async def create(request: Request) -> Response:
        spec = validate(TokenSpec, await _body(request), "token")
        token, plaintext = await database.create(spec)
        await guard.reload()
        return token_json(token, 201, plaintext)

    async def list_tokens(request: Request) -> Response:
        now = guard.clock()
        tokens = await database.tokens()
        return _json({"tokens": [guard.current(t).public(now) for t in tokens]})

    async def show(request: Request) -> Response:
        return token_json(await database.find(request.path_params["ref"]))

    async def patch(request: Request) -> Response:
        changes = validate(TokenPatch, await _body(request), "token change")
        token = await database.update(request.path_params["ref"], changes)
        await guard.reload()
        return token_json(token)

    async def delete(request: Request) -> Response:
        token = await database.delete(request.path_params["ref"])
        await guard.reload()
        return _json({"deleted": token.id, "name": token.name})

    def status_change(status: Any) -> Endpoint:
        async def change(request: Request) -> Response:
            token = await database.set_status(request.path_params["ref"], status)
            await guard.reload()
            return token_json(token)

        return change

    async def reset_usage(request: Request) -> Response:
        return token_json(await guard.reset_usage(request.path_params["ref"]))

    async def extend(request: Request) -> Response:
        body = await _body(request)
        expires = body.get("expires")
        if set(body) != {"expires"} or not isinstance(expires, str):
            raise InvalidRequest('extend takes {"expires": "2027-01-31" | "30d" | "never"}')
        token = await database.extend(request.path_params["ref"], expires)
        await guard.reload()
        return token_json(token)

    async def usage(request: Request) -> Response:
        query = request.query_params
        unknown = set(query) - {"since", "until", "token", "model"}
        if unknown:
            raise InvalidRequest(f"unknown query parameter(s) {', '.join(sorted(unknown))}")
        now = guard.clock()
        days = guard.settings.log_retention_days
        since = _day(query["since"], "since") if "since" in query else now - days * 86400
        until = _day(query["until"], "until") + 86400 if "until" in query else now + 86400
        await guard.flush()
        rows = await database.usage(
            since, until, token=query.get("token"), model=query.get("model")
        )
        return _json({"usage": rows})

    one = "/admin/tokens/{ref}"
    return [
        Route("/admin/tokens", create, methods=["POST"]),
        Route("/admin/tokens", list_tokens, methods=["GET"]),
        Route(one, show, methods=["GET"]),
        Route(one, patch, methods=["PATCH"]),
        Route(one, delete, methods=["DELETE"]),
        Route(f"{one}/pause", status_change("paused"), methods=["POST"]),
        Route(f"{one}/resume", status_change("active"), methods=["POST"]),
        Route(f"{one}/revoke", status_change("revoked"), methods=["POST"]),
        Route(f"{one}/reset-usage", reset_usage, methods=["POST"]),
        Route(f"{one}/extend", extend, methods=["POST"]),
        Route("/admin/usage", usage, methods=["GET"]),
    ]


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type="application/json")


async def _body(request: Request) -> Any:
    """The JSON body (an empty body reads as {})."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadTooLarge(f"admin request body exceeds {MAX_BODY} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {type(data).__name__}")
    return data


def _day(text: str, name: str) -> float:
    found = DAY.fullmatch(text)
    try:
        if found is None:
            raise ValueError
        year, month, day = (int(g) for g in found.groups())
        if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
            raise ValueError
    except ValueError as exc:
        raise InvalidRequest(f"{name}={text!r} is not a date like 2026-11-30") from exc
    return float(calendar.timegm((year, month, day, 0, 0, 0)))
