"""The route table: every HTTP and WebSocket route the server answers, declared once.

Each `Route` names its method, path, endpoint, the access it needs and its documentation;
`App` (app.py) dispatches from the table, the token check (access.py) reads each route's
`Access`, and the OpenAPI document (openapi.py) is built from it. A route that does not
declare its access is an error when the table is built, and a path the table does not declare
is a 404 whatever the token.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..auth.grant import Need
from .asgi import Receive, Scope, Send

RequestEndpoint = Callable[[Request], Awaitable[Response]]
"""A Starlette endpoint: everything but the infer hot path and WebSockets."""
RawEndpoint = Callable[[Scope, Receive, Send, Mapping[str, str]], Awaitable[None]]
"""An ASGI callable taking the path parameters: the infer hot path and WebSocket routes."""

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "WEBSOCKET"})
PARAMETER = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)}")
MAX_CACHED = 4096
"""Distinct (method, path) pairs whose lookup is remembered, least recently used dropped."""


class Access(enum.Enum):
    """What a route needs when authentication is on (docs/auth.md)."""

    PUBLIC = "public"
    """Never a token: the health probes, the docs page and its assets."""
    METADATA = "metadata"
    """Server-wide reads (metadata, every model's statistics, OpenAPI): open with
    ``[auth] public_metadata``, else the `read` permission; lists are filtered to the models
    the token may use."""
    SERVER_WIDE = "server-wide"
    """Reads that cannot be filtered per model (/metrics): open with public_metadata, else
    `read` on a token without model limits."""
    MODEL_READ = "model-read"
    """One model's metadata, configuration or statistics: open with public_metadata, else
    `read` on that model."""
    MODEL_READY = "model-ready"
    """A model's readiness, asked by clients about to infer: `read` or `infer` on it."""
    INFER = "infer"
    """Inference: `infer` on that model."""
    JOBS = "jobs"
    """The async jobs' own routes (/v2/jobs...): `infer` or `admin`; the endpoints keep to
    the jobs the caller may see (its own; every one's on its models for `admin`)."""
    SHARED_MEMORY = "shared-memory"
    """The system shared-memory extension (/v2/systemsharedmemory...): the `infer`
    permission, on any model (a region is only of use to infer with)."""
    ADMIN = "admin"
    """The repository and token APIs: the `admin` permission, and the model allowed when the
    path names one; the index and the token API keep to the caller's rights (auth/rights.py)."""


@dataclass(frozen=True, eq=False)
class Route:
    method: str
    """GET, POST, PUT, PATCH, DELETE or WEBSOCKET. A GET route also answers HEAD."""
    path: str
    """Starlette/OpenAPI template: ``/v2/models/{model}/versions/{version}/infer``."""
    endpoint: RequestEndpoint | RawEndpoint
    access: Access
    summary: str
    description: str = ""
    tag: str = ""
    raw: bool = False
    """`endpoint` is a `RawEndpoint` (scope, receive, send, path parameters)."""
    body: type[Any] | None = None
    """The JSON request body's type (a pydantic model), when the route takes one."""
    answer: Any = None
    """The 200 answer's type (a TypedDict or pydantic model); None for an empty object."""
    media_type: str = "application/json"
    """The 200 answer's media type; JSON answers are documented with `answer`."""
    query: tuple[str, ...] = ()
    """Optional query parameters it reads (documented as strings)."""
    content: tuple[str, ...] = ()
    """Media types of a raw request body (an archive, a TOML file), documented as such."""
    api: bool = True
    """Part of the API, in the OpenAPI document; False for pages people use in a browser
    (the console), which answer HTML and are documented in docs/console.md."""
    status: int = 200
    errors: tuple[int, ...] = ()
    """Statuses beside the success one the route answers on its own (400, 404, 503...);
    401/403/429 are added to the document for routes that need a token."""
    parameters: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.access, Access):
            raise TypeError(
                f"route {self.method} {self.path} declares no access (got {self.access!r}): "
                "every route must say whether it is public or which permission it needs"
            )
        if self.method not in METHODS:
            raise ValueError(f"route {self.path}: unknown method {self.method!r}")
        if self.method == "WEBSOCKET" and not self.raw:
            raise ValueError(f"route {self.path}: a WebSocket endpoint is a raw ASGI callable")
        object.__setattr__(self, "parameters", tuple(PARAMETER.findall(self.path)))

    def need(self, params: Mapping[str, str], public_metadata: bool, target: str) -> Need | None:
        """What a request to this route needs from its token; None when it needs none."""
        access = self.access
        if access is Access.PUBLIC:
            return None
        if access is Access.ADMIN:
            return Need(("admin",), target, params.get("model"))
        if access is Access.METADATA:
            return None if public_metadata else Need(("read",), target)
        if access is Access.JOBS:
            return Need(("infer", "admin"), target)
        if access is Access.SHARED_MEMORY:
            return Need(("infer",), target)
        if access is Access.SERVER_WIDE:
            return None if public_metadata else Need(("read",), target, every_model=True)
        model, version = params.get("model"), params.get("version")
        if access is Access.INFER:
            return Need(("infer",), target, model, version, infer=True)
        if public_metadata:
            return None
        if access is Access.MODEL_READY:
            return Need(("read", "infer"), target, model, version)
        return Need(("read",), target, model, version)


@dataclass(frozen=True, slots=True)
class Found:
    """A request's route, its path parameters and what it needs; or why there is none."""

    route: Route | None
    params: Mapping[str, str]
    need: Need | None = None
    allowed: tuple[str, ...] = ()
    """When `route` is None: the methods the path does take (405), or none (404)."""


class RouteTable:
    """The routes, looked up by (method, path); each lookup is computed once and remembered."""

    def __init__(self, routes: Iterable[Route], *, public_metadata: bool = False) -> None:
        self.routes: list[Route] = []
        self.public_metadata = public_metadata
        self._static: dict[str, dict[str, Route]] = {}
        self._patterns: list[tuple[re.Pattern[str], dict[str, Route]]] = []
        templates: dict[str, dict[str, Route]] = {}
        for route in routes:
            methods = templates.setdefault(route.path, {})
            if route.method in methods:
                raise ValueError(f"route {route.method} {route.path} is declared twice")
            methods[route.method] = route
            self.routes.append(route)
        for template, methods in templates.items():
            if "GET" in methods:
                methods["HEAD"] = methods["GET"]
            if "{" in template:
                self._patterns.append((_compile(template), methods))
            else:
                self._static[template] = methods
        self.find = functools.lru_cache(maxsize=MAX_CACHED)(self._find)

    def __iter__(self) -> Any:
        return iter(self.routes)

    def _find(self, method: str, path: str) -> Found:
        methods = self._static.get(path)
        params: dict[str, str] = {}
        if methods is None:
            for pattern, candidates in self._patterns:
                matched = pattern.fullmatch(path)
                if matched is not None:
                    methods, params = candidates, matched.groupdict()
                    break
            else:
                return Found(None, {})
        route = methods.get(method)
        if route is None:
            allowed = tuple(sorted(m for m in methods if m != "WEBSOCKET"))
            return Found(None, params, allowed=allowed or ("GET",))
        kind = "WebSocket" if method == "WEBSOCKET" else method
        return Found(route, params, route.need(params, self.public_metadata, f"{kind} {path}"))


def _compile(template: str) -> re.Pattern[str]:
    pattern, last = "", 0
    for match in PARAMETER.finditer(template):
        pattern += re.escape(template[last : match.start()]) + f"(?P<{match.group(1)}>[^/]+)"
        last = match.end()
    return re.compile(pattern + re.escape(template[last:]))
