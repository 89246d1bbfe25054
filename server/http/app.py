"""The HTTP API: thin Starlette endpoints over the DataPlane.

KServe v2 REST plus the Triton extensions real clients use; the infer hot path is in infer.py.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, start_http_server
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import metrics, wire
from ..auth.guard import Guard
from ..dataplane import DataPlane
from ..errors import CinferError, InvalidRequest, PayloadTooLarge
from ..settings import Settings
from . import admin, openapi
from .access import AuthMiddleware
from .accesslog import AccessLog
from .infer import InferEndpoint, Receive, Scope, Send, match

log = logging.getLogger("cinfer")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def create_app(settings: Settings, dataplane: DataPlane, guard: Guard | None = None) -> App:
    """The ASGI application; `dataplane` starts loading the repository when the app starts.

    With a `guard` (the caller builds one when ``[auth] enabled``), every request but the
    health probes needs an API token, and /admin serves token management; without one the
    server is open.
    """
    limit = settings.server.max_request_bytes

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(
                f"request body of {declared} bytes exceeds max_request_bytes ({limit})"
            )
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds max_request_bytes ({limit})")
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_json(request: Request, model: type[wire.Wire]) -> Any:
        body = await read_body(request)
        if not body.strip():
            return model()
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidRequest(f"invalid request body: {problems}") from exc

    # -- health and metadata --------------------------------------------------------------

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": dataplane.ready}, 200 if dataplane.ready else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(dataplane.server_metadata())

    async def model_metadata(request: Request) -> Response:
        p = request.path_params
        return JSONResponse(dataplane.model_metadata(p["model"], p.get("version")))

    async def model_ready(request: Request) -> Response:
        p = request.path_params
        is_ready = dataplane.model_ready(p["model"], p.get("version"))
        return JSONResponse({"name": p["model"], "ready": is_ready}, 200 if is_ready else 503)

    async def model_config(request: Request) -> Response:
        p = request.path_params
        return JSONResponse(dataplane.model_config(p["model"], p.get("version")))

    async def model_stats(request: Request) -> Response:
        p = request.path_params
        return JSONResponse(dataplane.model_statistics(p.get("model"), p.get("version")))

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # -- repository -----------------------------------------------------------------------

    async def repository_index(request: Request) -> Response:
        body = await read_json(request, wire.RepositoryIndexRequest)
        return JSONResponse(await dataplane.repository_index(body.ready))

    async def repository_load(request: Request) -> Response:
        body = await read_json(request, wire.RepositoryLoadRequest)
        await dataplane.load_model(request.path_params["model"], body.parameters)
        return JSONResponse({})

    async def repository_unload(request: Request) -> Response:
        await read_json(request, wire.RepositoryLoadRequest)
        await dataplane.unload_model(request.path_params["model"])
        return JSONResponse({})

    # -- documentation --------------------------------------------------------------------

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi.build(dataplane.reconciler, tokens=guard is not None))

    async def docs(request: Request) -> Response:
        return HTMLResponse(openapi.DOCS_HTML)

    # -- errors ---------------------------------------------------------------------------

    async def cinfer_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CinferError)
        return JSONResponse({"error": exc.message}, exc.status_code, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = exc.detail
        if exc.status_code == 404:
            detail = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
        return JSONResponse({"error": detail}, exc.status_code, headers=exc.headers)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal server error (see the server log)"}, 500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if guard is not None:
            await guard.start()
        try:
            await dataplane.start()
            try:
                if settings.metrics.enabled and settings.metrics.port:
                    # A separate port for scrapers (prometheus-client's own threaded server).
                    start_http_server(
                        settings.metrics.port, addr=settings.server.host, registry=registry
                    )
                    log.info(
                        "metrics on http://%s:%d/metrics",
                        settings.server.host,
                        settings.metrics.port,
                    )
                yield
            finally:
                await dataplane.stop()
        finally:
            if guard is not None:
                await guard.stop()

    from swagger_ui_bundle import swagger_ui_path

    auth = AuthMiddleware(None, guard) if guard is not None else None
    registry = metrics.registry(
        dataplane.reconciler, (lambda: auth.rejections) if auth is not None else None
    )
    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    routes = [
        Route("/v2/models/stats", model_stats, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", repository_unload, methods=["POST"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets"),
    ]
    if settings.metrics.enabled and not settings.metrics.port:
        routes.append(Route("/metrics", prometheus, methods=["GET"]))
    infer = InferEndpoint(dataplane, limit)
    for prefix in (model, versioned):
        routes += [
            Route(prefix, model_metadata, methods=["GET"]),
            Route(f"{prefix}/ready", model_ready, methods=["GET"]),
            Route(f"{prefix}/config", model_config, methods=["GET"]),
            Route(f"{prefix}/stats", model_stats, methods=["GET"]),
            # Reached only for what App does not take first (e.g. GET -> 405).
            Route(f"{prefix}/infer", infer, methods=["POST"]),
        ]
    if guard is not None:
        routes += admin.routes(guard)
    starlette = Starlette(
        routes=routes,
        exception_handlers={
            CinferError: cinfer_error,
            HTTPException: http_error,
            Exception: internal_error,
        },
        lifespan=lifespan,
    )
    return App(starlette, infer, auth, settings.server.access_log)


class App:
    """The ASGI application: infer POSTs go straight to the hot path, the rest to Starlette."""

    def __init__(
        self,
        starlette: Starlette,
        infer: InferEndpoint,
        auth: AuthMiddleware | None = None,
        access_log: str | bool = False,
    ) -> None:
        self.starlette = starlette
        self.router = starlette.router
        self.infer = infer
        # Outermost first: the access log sees every request, refused ones included; the
        # token check sees every request before routing.
        entry: Any = self._dispatch
        if auth is not None:
            auth.app = entry
            entry = auth
        if access_log:
            entry = AccessLog(entry, "text" if access_log is True else access_log)
        self._entry = entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = match(scope["path"])
            if target is not None:
                await self.infer.handle(scope, receive, send, *target)
                return
        await self.starlette(scope, receive, send)
