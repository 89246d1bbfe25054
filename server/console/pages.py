"""The console's routes: first-run set-up, sign-in, sign-out, the dashboard, its live stream
and its static files (docs/console.md).

Every page but set-up, sign-in and the static files needs a console session; without one a
page redirects to sign-in (or to set-up while no admin exists). Every state-changing request
carries the session's CSRF token (a form field or the ``X-CSRF-Token`` header); set-up and
sign-in carry a form token of their own. Errors are pages with the status and the reason.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import logging
import os
import platform
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .. import __version__
from ..auth.accounts import MAX_PASSWORD, Accounts
from ..auth.guard import Guard
from ..auth.store import Database
from ..dataplane import DataPlane
from ..errors import CinferError, InvalidRequest
from ..http.access import Proxies
from ..http.endpoints import Assets
from ..http.routes import Access, Route
from ..manage.curator import Curator
from ..models import ModelState
from ..settings import Settings
from .apidocs import ApiDocs
from .changes import ChangePages
from .gpus import GPUs
from .live import Live
from .models import ModelPages
from .sessions import Sessions, Throttle
from .tokens import TokenPages
from .trying import TryPages, read_try_form
from .usage import UsagePages
from .web import PREFIX, SECURITY_HEADERS, Visitor, Web, read_form

log = logging.getLogger("cinfer")

STATIC = Path(__file__).parent / "static"
ENGINES = ("onnxruntime", "onnxruntime-gpu", "openvino", "torch")
MAX_FORM_BYTES = 64 * 1024
AUDIT_PAGE = 100
SESSION_KEY = "console-session"
"""The server key (auth/accounts.py) console cookies are signed with."""

Handler = Callable[[Request], Awaitable[Response]]


def _page(handler: Callable[[Console, Request], Awaitable[Response]]) -> Any:
    """A console endpoint whose client errors are pages (status and reason), not JSON."""

    @functools.wraps(handler)
    async def run(self: Console, request: Request) -> Response:
        try:
            return await handler(self, request)
        except CinferError as exc:
            if exc.status_code >= 500:
                raise
            visitor = await self.web.visitor(request)
            response = self.web.render(
                request, "error.html", visitor, exc.status_code, message=exc.message
            )
            response.headers.update(exc.headers or {})
            return response

    return run


def _member(handler: Callable[[Console, Request, Visitor], Awaitable[Response]]) -> Any:
    """A console page for signed-in users: the others are sent to sign in (or to set-up
    while no admin exists)."""

    @_page
    @functools.wraps(handler)
    async def run(self: Console, request: Request) -> Response:
        visitor = await self.web.visitor(request)
        if visitor is None:
            has_admin = await self.accounts.has_admin()
            return self.web.redirect(request, "/login" if has_admin else "/setup")
        return await handler(self, request, visitor)

    return run


def _devices(gpus: GPUs | None) -> list[str]:
    found = []
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    name = model or platform.processor() or platform.machine()
    found.append(f"CPU: {name}, {os.cpu_count()} cores")
    if gpus is not None:  # NVML's names and memory
        return [*found, *gpus.devices()]
    listed = Path("/proc/driver/nvidia/gpus")
    if listed.is_dir():
        for gpu in sorted(listed.iterdir()):
            info = gpu / "information"
            name = ""
            if info.is_file():
                for line in info.read_text(errors="replace").splitlines():
                    if line.startswith("Model:"):
                        name = line.partition(":")[2].strip()
            found.append(f"GPU: {name or gpu.name}")
    return found


def _engines() -> list[tuple[str, str]]:
    installed = []
    for name in ENGINES:
        try:
            installed.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return installed


class Console:
    """The web console: pages on the route table, over the core's DataPlane and accounts."""

    def __init__(self, settings: Settings, dataplane: DataPlane, guard: Guard | None) -> None:
        """The console works on the guard's database when API tokens are on, else on one of
        its own over the same file (``[auth] database``)."""
        self.settings = settings
        self.dataplane = dataplane
        self.guard = guard
        self.owned = guard is None
        database = guard.database if guard is not None else Database(settings.auth.database)
        self.database = database
        self.accounts = Accounts(database)
        self.web = Web(self.accounts, Proxies(settings.auth.trusted_proxies))
        self.throttle = Throttle()
        self.live = Live(dataplane.reconciler)
        self.curator = Curator(dataplane, settings.repository, self.accounts)
        self.model_pages = ModelPages(self.web, dataplane, self.curator)
        self.change_pages = ChangePages(self.web, self.curator)
        self.api_docs = ApiDocs(self.web, database, guard, settings.console.session_hours)
        self.token_pages = TokenPages(self.web, database, guard)
        self.try_pages = TryPages(self.web, dataplane)
        self.usage_pages = UsagePages(self.web, database, guard)
        self.assets = Assets(STATIC)
        self.started = time.time()
        self._devices: list[str] = []
        self._engines = _engines()

    def routes(self) -> list[Route]:
        def page(method: str, path: str, endpoint: Handler, summary: str, *errors: int) -> Route:
            return Route(
                method,
                PREFIX + path,
                endpoint,
                Access.PUBLIC,
                f"Console: {summary}",
                tag="console",
                media_type="text/html",
                api=False,
                errors=errors,
            )

        changes = self.change_pages
        return [
            page("GET", "", self.dashboard, "the dashboard"),
            page("GET", "/setup", self.setup_page, "first-run set-up (while no admin exists)"),
            page("POST", "/setup", self.setup, "create the first admin account", 400, 403, 409),
            page("GET", "/login", self.login_page, "sign-in"),
            page("POST", "/login", self.login, "sign in", 400, 401, 403, 429),
            page("POST", "/logout", self.logout, "sign out (ends the account's sessions)", 403),
            page("POST", "/api-docs", self._signed_in(self._open_docs),
                 "open /docs with a token made for the visit", 403),
            page("GET", "/models", self.models, "every model and version"),
            page("GET", "/models/{model}", self.model, "one model", 404),
            page("POST", "/models/{model}/reload", self.reload, "reload a model", 403, 404),
            page("POST", "/models/{model}/unpublish", self.unpublish,
                 "unpublish a model (enabled = false in its model.toml)", 400, 403, 404),
            page("POST", "/models/{model}/publish", self.publish, "publish a model again",
                 400, 403, 404),
            page("GET", "/upload", self._signed_in(changes.upload_page), "the upload form"),
            page("POST", "/upload", self._signed_in(changes.upload),
                 "upload a model or a version (checked in staging first)", 400, 403, 404, 409,
                 413),
            page("GET", "/models/{model}/versions/{version}/state", self._signed_in(changes.state),
                 "a version's state (the upload page follows it)"),
            page("GET", "/models/{model}/edit", self._signed_in(changes.edit_page),
                 "the model's settings and model.toml", 404),
            page("POST", "/models/{model}/edit", self._signed_in(changes.edit),
                 "change the model's settings or model.toml", 400, 403, 404),
            page("POST", "/models/{model}/delete", self._signed_in(changes.delete),
                 "delete a version or the model (moved aside)", 400, 403, 404),
            page("GET", "/models/{model}/try", self.try_form, "try a model", 404),
            page("POST", "/models/{model}/try", self.try_run, "run one inference", 400, 403, 404),
            page("GET", "/tokens", self.tokens, "the API tokens"),
            page("POST", "/tokens", self.create_token, "create an API token", 400, 403, 409),
            page("GET", "/tokens/{ref}", self.token, "one API token, its limits and use", 404),
            page("POST", "/tokens/{ref}", self.update_token, "change an API token's limits",
                 400, 403, 404, 409),
            page("POST", "/tokens/{ref}/{action}", self.token_action,
                 "pause, resume, revoke or delete an API token", 400, 403, 404),
            page("GET", "/usage", self.usage, "the per-request usage log", 400),
            Route("GET", f"{PREFIX}/usage.csv", self.usage_csv, Access.PUBLIC,
                  "Console: the usage log as CSV", tag="console", media_type="text/csv",
                  api=False, errors=(400,)),
            page("GET", "/audit", self.audit, "the audit log"),
            Route("GET", f"{PREFIX}/live", self.stream, Access.PUBLIC,
                  "Console: the dashboard's live numbers (server-sent events)", tag="console",
                  media_type="text/event-stream", api=False, errors=(401,)),
            Route("GET", f"{PREFIX}/static/{{file}}", self.asset, Access.PUBLIC,
                  "Console: its static files (vendored htmx and uPlot, its CSS and JS)",
                  tag="console", media_type="application/octet-stream", api=False,
                  errors=(404,)),
        ]  # fmt: skip

    def _signed_in(self, handler: Callable[[Request, Visitor], Awaitable[Response]]) -> Handler:
        """`handler` as a console endpoint for signed-in users (`_member`'s rules)."""

        @_member
        async def run(console: Console, request: Request, visitor: Visitor) -> Response:
            return await handler(request, visitor)

        return functools.partial(run, self)

    async def _open_docs(self, request: Request, visitor: Visitor) -> Response:
        return await self.api_docs.open(request, visitor, await _form(request))

    async def start(self) -> None:
        if self.owned:
            await self.database.open()
        await self.curator.start()
        key = await self.accounts.key(SESSION_KEY)
        console = self.settings.console
        self.web.sessions = Sessions(
            key, console.session_idle_minutes * 60, console.session_hours * 3600
        )
        await self.live.start()
        self._devices = await asyncio.to_thread(_devices, self.live.gpus)
        if not await self.accounts.has_admin():
            log.warning(
                "console: no admin account yet: open /console to create one "
                "(or run: cinfer admin create --username <name>)"
            )

    async def stop(self) -> None:
        await self.live.stop()
        await self.curator.stop()
        if self.owned:
            await self.database.close()

    # -- first run, sign-in, sign-out ----------------------------------------------------

    @_page
    async def setup_page(self, request: Request) -> Response:
        if await self.accounts.has_admin():
            return self.web.redirect(request, "/login")
        return self.web.form_page(request, "setup.html", username="", error="")

    @_page
    async def setup(self, request: Request) -> Response:
        form = await _form(request)
        if not self.web.form_ok(request, form.get("csrf")):
            return self._form_refused(request, "setup.html")
        username = form.get("username", "").strip()
        password, confirm = form.get("password", ""), form.get("confirm", "")

        def again(status: int, error: str) -> Response:
            return self.web.form_page(request, "setup.html", status, username=username, error=error)

        if await self.accounts.has_admin():
            return again(409, "An admin account exists already: sign in instead.")
        if password != confirm:
            return again(400, "The two passwords differ.")
        try:
            account = await self.accounts.create_first_admin(username, password)
        except InvalidRequest as exc:
            return again(400, _sentence(exc.message))
        if account is None:  # another set-up won the race
            return again(409, "An admin account was created meanwhile: sign in instead.")
        address = self.web.address(request)
        await self.accounts.audit(username, "account.create", username, "first admin", address)
        log.info("console: first admin %r created from %s", username, address)
        cookie, _ = self.web.signer.issue(account)
        response = self.web.redirect(request, "")
        self.web.set_session(request, response, cookie)
        return response

    @_page
    async def login_page(self, request: Request) -> Response:
        if not await self.accounts.has_admin():
            return self.web.redirect(request, "/setup")
        if await self.web.visitor(request) is not None:
            return self.web.redirect(request, "")
        return self.web.form_page(request, "login.html", username="", error="")

    @_page
    async def login(self, request: Request) -> Response:
        form = await _form(request)
        if not self.web.form_ok(request, form.get("csrf")):
            return self._form_refused(request, "login.html")
        username = form.get("username", "").strip()[:64]
        password = form.get("password", "")[: MAX_PASSWORD + 1]
        address = self.web.address(request)
        keys = (f"account:{username.lower()}", f"address:{address}")
        wait = self.throttle.retry_after(keys)
        if wait > 0:
            seconds = max(1, int(wait + 0.999))
            response = self.web.form_page(
                request, "login.html", 429, username=username,
                error=f"Too many failed sign-ins. Try again in {seconds} s.",
            )  # fmt: skip
            response.headers["retry-after"] = str(seconds)
            return response
        account = await self.accounts.authenticate(username, password)
        if account is None:
            self.throttle.failed(keys)
            log.info("console: failed sign-in as %r from %s", username, address)
            return self.web.form_page(
                request, "login.html", 401, username=username,
                error="Wrong username or password.",
            )  # fmt: skip
        self.throttle.succeeded(keys)
        await self.accounts.audit(username, "session.start", username, "", address)
        cookie, _ = self.web.signer.issue(account)
        signed_in = self.web.redirect(request, "")
        self.web.set_session(request, signed_in, cookie)
        return signed_in

    @_page
    async def logout(self, request: Request) -> Response:
        visitor = await self.web.visitor(request)
        if visitor is None:
            response = self.web.redirect(request, "/login")
            self.web.clear_session(request, response)
            return response
        form = await _form(request)
        self.web.check_csrf(visitor, form.get("csrf") or request.headers.get("x-csrf-token"))
        username = visitor.account.username
        await self.accounts.end_sessions(username)
        await self.api_docs.close(username)
        await self.accounts.audit(
            username, "session.end", username, "signed out", self.web.address(request)
        )
        response = self.web.redirect(request, "/login")
        self.web.clear_session(request, response)
        return response

    def _form_refused(self, request: Request, template: str) -> Response:
        return self.web.form_page(
            request, template, 403, username="",
            error="This form expired or did not come from this server: try again.",
        )  # fmt: skip

    # -- pages that need a session ----------------------------------------------------------

    @_member
    async def dashboard(self, request: Request, visitor: Visitor) -> Response:
        reconciler = self.dataplane.reconciler
        states: dict[str, int] = {state.value: 0 for state in ModelState}
        failed = []
        for name, model in sorted(reconciler.models.items()):
            if model.reason and not model.versions:
                states[ModelState.UNAVAILABLE.value] += 1
                failed.append((name, "", model.reason))
            for number, version in sorted(model.versions.items()):
                states[version.state.value] += 1
                if version.state is ModelState.UNAVAILABLE or version.reason:
                    failed.append((name, str(number), version.reason))
        repository = self.settings.repository
        return self.web.render(
            request, "dashboard.html", visitor,
            page="dashboard",
            server_version=__version__,
            uptime=time.time() - self.started,
            engines=self._engines,
            devices=self._devices,
            gpu_charts=self.live.gpus.charts() if self.live.gpus is not None else [],
            repository_path=str(repository.path),
            repository_mode=repository.mode,
            states={k: v for k, v in states.items() if v},
            models=len(reconciler.models),
            failed=failed[:10],
        )  # fmt: skip

    @_member
    async def models(self, request: Request, visitor: Visitor) -> Response:
        return await self.model_pages.listing(request, visitor)

    @_member
    async def model(self, request: Request, visitor: Visitor) -> Response:
        return await self.model_pages.detail(request, visitor)

    @_member
    async def reload(self, request: Request, visitor: Visitor) -> Response:
        return await self.model_pages.reload(request, visitor, await _form(request))

    @_member
    async def unpublish(self, request: Request, visitor: Visitor) -> Response:
        form = await _form(request)
        return await self.model_pages.set_published(request, visitor, form, False)

    @_member
    async def publish(self, request: Request, visitor: Visitor) -> Response:
        form = await _form(request)
        return await self.model_pages.set_published(request, visitor, form, True)

    @_member
    async def try_form(self, request: Request, visitor: Visitor) -> Response:
        return await self.try_pages.form(request, visitor)

    @_member
    async def try_run(self, request: Request, visitor: Visitor) -> Response:
        return await self.try_pages.run(request, visitor, await read_try_form(request))

    @_member
    async def tokens(self, request: Request, visitor: Visitor) -> Response:
        return await self.token_pages.listing(request, visitor)

    @_member
    async def create_token(self, request: Request, visitor: Visitor) -> Response:
        return await self.token_pages.create(request, visitor, await _form(request))

    @_member
    async def token(self, request: Request, visitor: Visitor) -> Response:
        return await self.token_pages.detail(request, visitor)

    @_member
    async def update_token(self, request: Request, visitor: Visitor) -> Response:
        return await self.token_pages.update(request, visitor, await _form(request))

    @_member
    async def token_action(self, request: Request, visitor: Visitor) -> Response:
        return await self.token_pages.act(request, visitor, await _form(request))

    @_member
    async def usage(self, request: Request, visitor: Visitor) -> Response:
        return await self.usage_pages.listing(request, visitor)

    @_member
    async def usage_csv(self, request: Request, visitor: Visitor) -> Response:
        return await self.usage_pages.export(request, visitor)

    @_member
    async def audit(self, request: Request, visitor: Visitor) -> Response:
        before = request.query_params.get("before", "")
        if before and not before.isdigit():
            raise InvalidRequest(f"before={before!r} is not an audit entry id")
        entries = await self.accounts.audit_log(AUDIT_PAGE + 1, int(before) if before else None)
        return self.web.render(
            request, "audit.html", visitor, page="audit",
            entries=entries[:AUDIT_PAGE], more=len(entries) > AUDIT_PAGE,
        )  # fmt: skip

    async def stream(self, request: Request) -> Response:
        if await self.web.visitor(request) is None:
            return Response(
                "sign in first\n", status_code=401, media_type="text/plain",
                headers=SECURITY_HEADERS,
            )  # fmt: skip
        return StreamingResponse(
            self.live.events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def asset(self, request: Request) -> Response:
        return self.assets.answer(request.path_params["file"], request.headers)


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded or multipart form of a console POST (text fields only)."""
    form = await read_form(request, MAX_FORM_BYTES, "a console form")
    return {key: value for key, value in form.items() if isinstance(value, str)}


def _sentence(message: str) -> str:
    message = message[:1].upper() + message[1:]
    return message if message.endswith(".") else message + "."
