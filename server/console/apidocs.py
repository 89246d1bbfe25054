"""The API docs (`/docs`) for a signed-in console user, without pasting a token.

A console session is not an API token, and the API never reads the console's cookie. So
"API docs" in the console's menu mints a real API token for the visit instead: named
``console-docs-<username>``, with the account's rights (an admin's admin, read and infer; a
viewer's read and infer), expiring when a session would, remarked as the console's, listed on
the tokens page and written to the audit log like any token. The page hands it to Swagger UI
through the tab's sessionStorage (the key the docs page reads) and opens `/docs`. Each visit
replaces the account's previous docs token; signing out deletes it.

With API tokens off the docs need no token, and the menu goes straight to `/docs`.
"""

from __future__ import annotations

import contextlib
import logging
import math

from starlette.requests import Request
from starlette.responses import Response

from ..auth.guard import Guard
from ..auth.store import Database
from ..auth.tokens import TokenSpec
from ..errors import NotFound
from .web import Visitor, Web

log = logging.getLogger("cinfer")

PREFIX = "console-docs-"


def token_name(username: str) -> str:
    return PREFIX + username


class ApiDocs:
    """POST /console/api-docs: a token for this visit to /docs, then /docs."""

    def __init__(self, web: Web, database: Database, guard: Guard | None, hours: float) -> None:
        self.web = web
        self.database = database
        self.guard = guard
        self.hours = max(1, math.ceil(hours))

    async def open(self, request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        self.web.check_csrf(visitor, form.get("csrf") or request.headers.get("x-csrf-token"))
        docs = str(request.scope.get("root_path", "")) + "/docs"
        if self.guard is None:
            return self.web.redirect_to(docs)
        username = visitor.account.username
        await self.close(username)
        scopes = ["admin", "read", "infer"] if visitor.admin else ["read", "infer"]
        spec = TokenSpec.model_validate(
            {
                "name": token_name(username),
                "remark": f"the console's, for {username}'s visit to /docs; deleted at sign-out",
                "scopes": scopes,
                "expires": f"{self.hours}h",
            }
        )
        token, secret = await self.database.create(spec)
        await self.guard.reload()
        await self.web.accounts.audit(
            username, "token.create", f"token {token.name} ({token.id})",
            f"for /docs: {', '.join(scopes)}, expires in {self.hours} h",
            self.web.address(request),
        )  # fmt: skip
        response = self.web.render(
            request, "apidocs.html", visitor, page="", secret=secret, docs=docs
        )
        response.headers["cache-control"] = "no-store"
        return response

    async def close(self, username: str) -> None:
        """Delete the account's docs token, if it has one (sign-out, the next visit)."""
        if self.guard is None:
            return
        with contextlib.suppress(NotFound):
            await self.database.delete(token_name(username))
            await self.guard.reload()
