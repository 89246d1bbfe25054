"""The HTTP endpoints beside inference, as objects over the DataPlane.

Each class receives what it serves from (the DataPlane, the route table, a renderer) and
answers `routes()`: its part of the route table, with the access each route needs and its
documentation. Inference is infer.py's raw ASGI endpoint; token management is admin.py.
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from .. import wire
from ..dataplane import DataPlane
from ..errors import InvalidRequest, NotFound, PayloadTooLarge, show
from . import openapi
from .asgi import GRANT_KEY
from .infer import InferEndpoint
from .routes import Access, Route, RouteTable

MODEL = "/v2/models/{model}"
VERSIONED = "/v2/models/{model}/versions/{version}"
MODEL_ERRORS = (400, 404)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def read_body(request: Request, limit: int, too_large: str | None = None) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed `limit` bytes (with the
    message `too_large` when given, else one naming max_request_bytes)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            too_large or f"request body of {declared} bytes exceeds max_request_bytes ({limit})"
        )
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(too_large or f"request body exceeds max_request_bytes ({limit})")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, model: type[wire.Wire], limit: int) -> Any:
    """The body validated as `model`; an empty body is `model()`; a 400 names each problem."""
    body = await read_body(request, limit)
    try:
        if not body.strip():
            return model()  # a model with required fields refuses it, naming them
        return model.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidRequest(f"invalid request body: {problems}") from exc


def allowed_models(request: Request) -> Callable[[str], bool] | None:
    """Which models the request's token may use, for answers that list models; None: all
    (no token needed, or one without model limits)."""
    grant = request.scope.get(GRANT_KEY)
    return grant.allows_model if grant is not None and grant.patterns else None


def _version(request: Request) -> str | None:
    return request.path_params.get("version")


class Health:
    """The KServe v2 liveness and readiness probes (public whatever the auth settings)."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def live(self, request: Request) -> Response:
        return JSONResponse(wire.Live(live=True))

    async def ready(self, request: Request) -> Response:
        ready = self.dataplane.ready
        return JSONResponse(wire.Ready(ready=ready), 200 if ready else 503)

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/v2/health/live", self.live, Access.PUBLIC, "Liveness: the server is up",
                  tag="health", answer=wire.Live),
            Route("GET", "/v2/health/ready", self.ready, Access.PUBLIC,
                  "Readiness: the start-up load has finished", tag="health", answer=wire.Ready,
                  errors=(503,)),
        ]  # fmt: skip


class Metadata:
    """Server and model metadata, Triton's model configuration and statistics extension."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def server(self, request: Request) -> Response:
        return JSONResponse(self.dataplane.server_metadata())

    async def model(self, request: Request) -> Response:
        model = request.path_params["model"]
        return JSONResponse(self.dataplane.model_metadata(model, _version(request)))

    async def model_ready(self, request: Request) -> Response:
        model = request.path_params["model"]
        ready = self.dataplane.model_ready(model, _version(request))
        return JSONResponse(wire.ModelReady(name=model, ready=ready), 200 if ready else 503)

    async def config(self, request: Request) -> Response:
        model = request.path_params["model"]
        return JSONResponse(self.dataplane.model_config(model, _version(request)))

    async def statistics(self, request: Request) -> Response:
        model = request.path_params.get("model")
        answer = await self.dataplane.model_statistics(
            model, _version(request), allowed=allowed_models(request)
        )
        return JSONResponse(answer)

    def routes(self) -> list[Route]:
        routes = [
            Route("GET", "/v2", self.server, Access.METADATA, "Server metadata", tag="metadata",
                  answer=wire.ServerMetadataAnswer),
            Route("GET", "/v2/models/stats", self.statistics, Access.METADATA,
                  "Statistics of every model version (Triton's statistics extension)",
                  tag="statistics", answer=wire.StatisticsAnswer),
        ]  # fmt: skip
        for prefix, which in ((MODEL, "the model's newest ready version"), (VERSIONED, "")):
            of = f" ({which})" if which else ""
            routes += [
                Route("GET", prefix, self.model, Access.MODEL_READ, f"Model metadata{of}",
                      tag="metadata", answer=wire.ModelMetadataAnswer, errors=MODEL_ERRORS),
                Route("GET", f"{prefix}/ready", self.model_ready, Access.MODEL_READY,
                      f"Model readiness{of}", tag="health", answer=wire.ModelReady,
                      errors=(*MODEL_ERRORS, 503)),
                Route("GET", f"{prefix}/config", self.config, Access.MODEL_READ,
                      f"Model configuration, Triton's ModelConfig as JSON{of}", tag="metadata",
                      answer=wire.ModelConfigAnswer, errors=MODEL_ERRORS),
                Route("GET", f"{prefix}/stats", self.statistics, Access.MODEL_READ,
                      f"Model statistics{of}", tag="statistics",
                      answer=wire.StatisticsAnswer, errors=MODEL_ERRORS),
            ]  # fmt: skip
        return routes


class Inference:
    """The infer routes (the hot path itself is infer.py's `InferEndpoint`)."""

    def __init__(self, endpoint: InferEndpoint) -> None:
        self.endpoint = endpoint

    def routes(self) -> list[Route]:
        return [
            Route("POST", f"{prefix}/infer", self.endpoint.asgi, Access.INFER,
                  f"Inference (any model{of})", tag="inference", raw=True,
                  body=wire.InferenceRequest, answer=wire.InferenceResponse,
                  errors=(400, 404, 413, 415, 503))
            for prefix, of in ((MODEL, ""), (VERSIONED, ", one version"))
        ]  # fmt: skip


class Repository:
    """Triton's model repository extension: the index, load and unload."""

    def __init__(self, dataplane: DataPlane, limit: int) -> None:
        self.dataplane = dataplane
        self.limit = limit

    async def index(self, request: Request) -> Response:
        body = await read_json(request, wire.RepositoryIndexRequest, self.limit)
        entries = await self.dataplane.repository_index(body.ready)
        allowed = allowed_models(request)
        if allowed is not None:
            entries = [entry for entry in entries if allowed(entry["name"])]
        return JSONResponse(entries)

    async def load(self, request: Request) -> Response:
        body = await read_json(request, wire.RepositoryLoadRequest, self.limit)
        await self.dataplane.load_model(request.path_params["model"], body.parameters)
        return JSONResponse({})

    async def unload(self, request: Request) -> Response:
        await read_json(request, wire.RepositoryLoadRequest, self.limit)
        await self.dataplane.unload_model(request.path_params["model"])
        return JSONResponse({})

    def routes(self) -> list[Route]:
        one = "/v2/repository/models/{model}"
        return [
            Route("POST", "/v2/repository/index", self.index, Access.ADMIN,
                  "Every model and version with its state", tag="repository",
                  body=wire.RepositoryIndexRequest, answer=list[wire.IndexEntry], errors=(400,)),
            Route("POST", f"{one}/load", self.load, Access.ADMIN,
                  "Re-read the model's folder and apply it (swap when ready)",
                  tag="repository", body=wire.RepositoryLoadRequest, errors=(400, 404)),
            Route("POST", f"{one}/unload", self.unload, Access.ADMIN,
                  "Unload every version of the model", tag="repository",
                  body=wire.RepositoryLoadRequest, errors=(400, 404)),
        ]  # fmt: skip


class Metrics:
    """Prometheus text exposition, rendered by `render` (prometheus.py)."""

    def __init__(self, render: Callable[[], Awaitable[bytes]], media_type: str) -> None:
        self.render = render
        self.media_type = media_type

    async def metrics(self, request: Request) -> Response:
        return Response(await self.render(), media_type=self.media_type)

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/metrics", self.metrics, Access.SERVER_WIDE,
                  "Prometheus metrics (Triton's nv_inference_* families and cinfer_*)",
                  tag="metrics", media_type="text/plain"),
        ]  # fmt: skip


class Docs:
    """The OpenAPI document, built from the route table, and Swagger UI to read it.

    The page and its assets are public; with tokens on, the page asks for a token first and
    sends it with every request it makes, the document's own fetch included.
    """

    def __init__(self, dataplane: DataPlane, table: Callable[[], RouteTable], tokens: bool) -> None:
        self.dataplane = dataplane
        self.table = table
        self.tokens = tokens
        self.assets = Assets()
        self._document: openapi.Document | None = None

    async def document(self, request: Request) -> Response:
        if self._document is None:  # the routes' part, built once
            self._document = openapi.Document(self.table(), self.tokens)
        document = await self._document.build(self.dataplane.reconciler, allowed_models(request))
        return JSONResponse(document)

    async def page(self, request: Request) -> Response:
        return HTMLResponse(openapi.docs_page(self.tokens))

    async def asset(self, request: Request) -> Response:
        return self.assets.answer(request.path_params["file"], request.headers)

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/openapi.json", self.document, Access.METADATA,
                  "This document: every route, and each ready model's inputs", tag="docs",
                  answer=dict[str, Any]),
            Route("GET", "/docs", self.page, Access.PUBLIC,
                  "Swagger UI over this document", tag="docs", media_type="text/html"),
            Route("GET", "/docs/assets/{file}", self.asset, Access.PUBLIC,
                  "Swagger UI's files (from the swagger-ui-bundle package)", tag="docs",
                  media_type="application/octet-stream", errors=(404,)),
        ]  # fmt: skip


class Assets:
    """Static files from one folder (Swagger UI's by default), read once and answered from
    memory with an ETag."""

    def __init__(self, folder: Path | None = None) -> None:
        if folder is None:
            from swagger_ui_bundle import swagger_ui_path

            folder = Path(swagger_ui_path)
        self.folder = folder
        self._files: dict[str, tuple[bytes, str, str]] = {}

    def answer(self, name: str, headers: Any) -> Response:
        found = self._files.get(name)
        if found is None:
            path = self.folder / name
            if name.startswith(".") or "/" in name or not path.is_file():
                raise NotFound(f"no asset {show(name)}")
            content = path.read_bytes()
            media = mimetypes.guess_type(name)[0] or "application/octet-stream"
            found = (content, media, '"' + hashlib.sha256(content).hexdigest()[:32] + '"')
            self._files[name] = found
        content, media, etag = found
        cache = {"etag": etag, "cache-control": "public, max-age=86400"}
        if headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=cache)
        return Response(content, media_type=media, headers=cache)
