"""The HTTP door: KServe v2 REST plus the Triton extensions real clients use, over the DataPlane.

`create_app(settings, dataplane, guard)` builds the route table from the endpoint objects
(endpoints.py, infer.py, jobs.py, admin.py) and returns `App`, which dispatches from it:

    access log (accesslog.py) -> App: RouteTable.find(method, path)    (routes.py)
        404 / 405 for what the table does not declare, whatever the token
        -> Gate.enter when the route needs a token                     (access.py)
        -> the endpoint: raw ASGI for infer (infer.py), else a Starlette Request -> Response

Why not Starlette's router: on these 2-core machines a bare uvicorn ASGI app answers 23k
requests/s, the same app behind Starlette's router and middleware 9.3k; one remembered table
lookup keeps every route as cheap as the infer path needs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from starlette.requests import Request

from .. import pipelines
from ..auth.accounts import Accounts
from ..auth.admission import Admission
from ..auth.guard import Guard
from ..dataplane import DataPlane
from ..errors import CinferError
from ..manage.curator import Curator
from ..prometheus import CONTENT_TYPE, Exposition, MetricsPort
from ..settings import Settings
from .access import Gate
from .accesslog import AccessLog
from .admin import Admin
from .asgi import ASGIApp, Receive, Scope, Send, send_error
from .endpoints import Docs, Health, Inference, Metadata, Metrics, Repository
from .infer import InferEndpoint
from .models_admin import ModelAdmin
from .routes import Found, RawEndpoint, RequestEndpoint, Route, RouteTable
from .sharedmemory import SharedMemory

log = logging.getLogger("cinfer")

JOBS_GRACE_S = 5.0
"""At shutdown, how long the jobs in flight may take to finish; the rest run again at the
next start (their attempt counted)."""


def create_app(
    settings: Settings,
    dataplane: DataPlane,
    guard: Guard | None = None,
    routes: Sequence[Route] = (),
    grpc_port: int | None = None,
) -> App:
    """The ASGI application; `dataplane` starts loading the repository when the app starts.

    With a `guard` (the caller builds one when ``[auth] enabled``), every route the table
    does not declare public needs an API token, and /admin serves token management; without
    one the server is open. `routes` adds routes to the table (a front door being built).
    With a `grpc_port` the gRPC door (server/grpc/) serves on it, started and stopped with
    the app, over the same DataPlane and tokens (`cinfer serve` passes ``[grpc] port``).
    """
    limit = settings.server.max_request_bytes
    if guard is not None:  # a pipeline needs the right to each of its steps' models
        models = dataplane.reconciler.models
        guard.steps = lambda name: pipelines.step_models(models, name)
    admission = Admission(guard) if guard is not None else None
    gate = Gate(admission) if admission is not None else None
    exposition = Exposition(
        dataplane.reconciler, (lambda: gate.rejections) if gate is not None else None
    )
    # A separate port for scrapers, served on this loop by the same renderer.
    metrics_port = (
        MetricsPort(exposition, settings.server.host, settings.metrics.port)
        if settings.metrics.enabled and settings.metrics.port
        else None
    )

    table: RouteTable | None = None

    def current() -> RouteTable:  # the table the Docs endpoint is itself part of
        assert table is not None
        return table

    jobs = None
    if settings.jobs.enabled:  # the async jobs door (issue 15), beside the infer URL
        from ..jobs.api import Jobs
        from .jobs import JobsEndpoint, StoredCodec

        recheck = guard.recheck if guard is not None else None
        jobs = JobsEndpoint(Jobs(settings.jobs, dataplane, StoredCodec(), recheck=recheck), limit)
    door = None
    if grpc_port is not None:
        from ..grpc.door import GrpcDoor

        door = GrpcDoor(
            dataplane, admission, settings.server.host, grpc_port, limit,
            settings.server.shutdown_grace_s,
        )  # fmt: skip
    infer = InferEndpoint(dataplane, limit, jobs.prefer if jobs is not None else None)
    endpoints: list[Any] = [
        Health(dataplane),
        Metadata(dataplane),
        Inference(infer),
        *([jobs] if jobs is not None else []),
        Repository(dataplane, limit),
        SharedMemory(dataplane.regions, limit),
        Docs(dataplane, current, tokens=guard is not None),
    ]
    if settings.metrics.enabled and not settings.metrics.port:
        endpoints.append(Metrics(exposition.render, CONTENT_TYPE))
    console = None
    if settings.console.enabled:
        from ..console.pages import Console

        console = Console(settings, dataplane, guard)
        endpoints.append(console)
    curator = None
    if guard is not None:
        # One Curator for the console and /admin/models: changes to a model are serialised.
        curator = (
            console.curator
            if console is not None
            else Curator(dataplane, settings.repository, Accounts(guard.database))
        )
        endpoints += [Admin(guard), ModelAdmin(curator)]
    declared = [route for endpoint in endpoints for route in endpoint.routes()]
    table = RouteTable(
        [*declared, *routes], public_metadata=guard.public_metadata if guard else False
    )

    async def start() -> None:
        if guard is not None:
            await guard.start()
        try:
            await dataplane.start()
            if jobs is not None:
                try:
                    await jobs.jobs.start()
                except BaseException:
                    await dataplane.stop()
                    raise
            if door is not None:  # its port taken: nothing keeps running
                try:
                    await door.start()
                except BaseException:
                    if jobs is not None:
                        await jobs.jobs.stop(0)
                    await dataplane.stop()
                    raise
        except BaseException:
            if guard is not None:
                await guard.stop()
            raise
        if metrics_port is not None:
            await metrics_port.start()
        if console is not None:
            await console.start()
        elif curator is not None:
            await curator.start()

    async def stop() -> None:
        try:
            if door is not None:  # its calls in flight drain before the models go
                await door.stop()
            if jobs is not None:  # before the models go: jobs in flight get to finish
                await jobs.jobs.stop(min(JOBS_GRACE_S, settings.server.shutdown_grace_s))
            if console is not None:
                await console.stop()
            elif curator is not None:
                await curator.stop()
            if metrics_port is not None:
                await metrics_port.stop()
            await dataplane.stop()
        finally:
            if guard is not None:
                await guard.stop()

    app = App(table, gate, start, stop, settings.server.access_log)
    app.grpc = door
    return app


class App:
    """The ASGI application: every request is dispatched from the route table."""

    def __init__(
        self,
        table: RouteTable,
        gate: Gate | None,
        start: Any,
        stop: Any,
        access_log: str | bool = False,
    ) -> None:
        self.table = table
        self.gate = gate
        self._start = start
        self._stop = stop
        self.grpc: Any = None
        """The gRPC door (server/grpc/door.py) when it is on: its bound port for tests."""
        entry: ASGIApp = self._dispatch
        if access_log:
            entry = AccessLog(entry, "text" if access_log is True else access_log)
        self._entry = entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            path = scope["path"]
            root = scope.get("root_path")
            if root and path.startswith(root):  # [server] root_path: uvicorn put it in front
                path = path[len(root) :] or "/"
            found = self.table.find(scope["method"] if kind == "http" else "WEBSOCKET", path)
        else:
            if kind == "lifespan":
                await self.lifespan(receive, send)
            return
        route = found.route
        if route is None:
            await self._missing(found, scope, send)
            return
        if found.need is not None and self.gate is not None:
            await self.gate.enter(found, scope, receive, send, self._run)
        elif route.raw:  # the infer hot path: no extra frame
            await cast(RawEndpoint, route.endpoint)(scope, receive, send, found.params)
        else:
            await self._run(found, scope, receive, send)

    async def _run(self, found: Found, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the route's endpoint: raw ASGI as it is; a Starlette endpoint with its
        `CinferError` as its `{"error": ...}` answer, anything else logged and a 500 that
        leaks nothing."""
        route = found.route
        assert route is not None
        if route.raw:
            await cast(RawEndpoint, route.endpoint)(scope, receive, send, found.params)
            return
        scope["path_params"] = found.params
        try:
            response = await cast(RequestEndpoint, route.endpoint)(Request(scope, receive))
        except CinferError as exc:
            await send_error(send, exc.status_code, exc.message, exc.headers)
            return
        except Exception as exc:
            log.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
            await send_error(send, 500, "internal server error (see the server log)")
            return
        await response(scope, receive, send)

    async def _missing(self, found: Found, scope: Scope, send: Send) -> None:
        path = scope["path"]
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": f"no route {path}"})
            return
        method = scope["method"]
        if found.allowed:
            await send_error(
                send, 405, f"method {method} is not allowed on {path}",
                {"allow": ", ".join(found.allowed)},
            )  # fmt: skip
        else:
            await send_error(send, 404, f"no route {method} {path}")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The app started (repository loaded, guard running) for the block's length: what
        the ASGI lifespan does under a server, for in-process use."""
        await self._start()
        try:
            yield
        finally:
            await self._stop()

    async def lifespan(self, receive: Receive, send: Send) -> None:
        """ASGI lifespan: start the DataPlane (and guard) at start-up, stop them at shutdown."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._start()
                except BaseException as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    if not isinstance(exc, Exception):
                        raise
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self._stop()
                except Exception as exc:
                    log.error("shutdown failed: %s", exc, exc_info=exc)
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return
