"""The OpenAPI document, built from the route table and from each loaded model's schema.

Every route in the table is documented from its own declaration (summary, parameters, body
and answer types, the statuses it answers, whether it needs a token); every READY model also
gets its own infer path whose request schema names its inputs, datatypes and shapes, with a
ready-to-send example. `/docs` renders it with Swagger UI from the `swagger-ui-bundle`
package's files, served by the server itself (no CDN).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter

from .. import __version__, wire
from ..images import example_image
from ..models import ModelVersion, warmup_inputs
from ..reconciler import Reconciler
from .routes import Access, Route, RouteTable

REF = "#/components/schemas/{model}"
MODELS_PER_YIELD = 50
"""Models documented between two yields to the event loop: a large repository's document
never holds up inference."""

STATUS = {
    400: "Bad request: the message names what was wrong",
    401: "No API token, or an invalid one",
    403: "The token may not do this (permission, model or address)",
    404: "Unknown model, version or token",
    409: "Conflicts with what exists (a name already taken)",
    413: "Request body too large",
    415: "Unsupported Content-Encoding",
    429: "Over the token's rate limit or monthly quota (Retry-After says when to retry)",
    503: "Not ready, queue full or queue timeout",
}
READINESS = (wire.Ready, wire.ModelReady)
"""Answers that are also the body of their 503 ("not ready")."""

DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Cinfer API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
  <style>
    #token-form { font: 14px sans-serif; margin: 16px auto; max-width: 1400px; padding: 0 20px; }
    #token-form input { width: 32em; }
  </style>
</head>
<body>
  __FORM__
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script>
    const tokens = __TOKENS__;
    function show() {
      const token = sessionStorage.getItem("cinfer-token");
      SwaggerUIBundle({
        url: "/openapi.json",
        dom_id: "#swagger-ui",
        requestInterceptor: (request) => {
          if (token && !request.headers.Authorization) {
            request.headers.Authorization = "Bearer " + token;
          }
          return request;
        },
      });
    }
    if (tokens) {
      const form = document.getElementById("token-form");
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        sessionStorage.setItem("cinfer-token", document.getElementById("token").value.trim());
        show();
      });
      if (sessionStorage.getItem("cinfer-token")) {  // set by the console's "API docs"
        document.getElementById("token").value = sessionStorage.getItem("cinfer-token");
        show();
      }
    } else {
      show();
    }
  </script>
</body>
</html>
"""

TOKEN_FORM = """<form id="token-form">
    <label for="token">API token (the server has authentication on; the token stays in
    this tab's session storage and goes with every request this page makes):</label><br>
    <input id="token" name="token" type="password" autocomplete="off"
           placeholder="cinfer_<12 hex digits>_<secret>">
    <button type="submit">Open the API</button>
  </form>"""


def docs_page(tokens: bool) -> str:
    """Swagger UI's page; with `tokens`, it asks for one before fetching the document."""
    page = DOCS_HTML.replace("__TOKENS__", "true" if tokens else "false")
    return page.replace("__FORM__", TOKEN_FORM if tokens else "")


class Schemas:
    """JSON schemas of the declared types, their shared definitions in `components`."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def of(self, kind: Any) -> dict[str, Any]:
        schema = TypeAdapter(kind).json_schema(ref_template=REF)
        for name, definition in schema.pop("$defs", {}).items():
            self.components[name] = _openapi30(definition)
        if "title" in schema and "properties" in schema:  # a named type: share it
            name = kind.__name__
            self.components[name] = _openapi30(schema)
            return _ref(name)
        return _openapi30(schema)  # type: ignore[no-any-return]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def operation(route: Route, schemas: Schemas, tokens: bool) -> dict[str, Any]:
    """One route's OpenAPI operation."""
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": _operation_id(route),
        "tags": [route.tag or route.path.split("/")[1]],
    }
    if route.description:
        op["description"] = route.description
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in route.parameters
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
        for name in route.query
    ]
    if route.raw and route.access is Access.INFER:
        parameters.append(
            {
                "name": "Inference-Header-Content-Length",
                "in": "header",
                "required": False,
                "description": "Binary tensor extension: the length of the JSON header that "
                "starts the body; the tensors' bytes follow it.",
                "schema": {"type": "integer", "minimum": 0},
            }
        )
    if parameters:
        op["parameters"] = parameters
    if route.body is not None:
        content: dict[str, Any] = {"application/json": {"schema": schemas.of(route.body)}}
        if route.access is Access.INFER:
            content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
        op["requestBody"] = {"required": route.access is Access.INFER, "content": content}
    elif route.content:
        raw = {"type": "string", "format": "binary"}
        op["requestBody"] = {
            "required": True,
            "content": {m: {"schema": raw} for m in route.content},
        }
    answer = route.answer
    if route.media_type == "application/json":
        schema = schemas.of(answer) if answer is not None else {"type": "object"}
        success = _json(schema, "Success")
    else:
        success = {
            "description": "Success",
            "content": {route.media_type: {"schema": {"type": "string"}}},
        }
    responses: dict[str, Any] = {str(route.status): success}
    error = schemas.of(wire.ErrorResponse)
    statuses = set(route.errors)
    if route.body is not None or route.content:
        statuses |= {400, 413}
    if tokens and route.access is not Access.PUBLIC:
        statuses |= {401, 403, 429}
    for status in sorted(statuses):
        if status == 503 and answer in READINESS:
            responses["503"] = _json(schemas.of(answer), "Not ready")
        else:
            responses[str(status)] = _json(error, STATUS.get(status, "Error"))
    op["responses"] = responses
    if tokens and route.access is Access.PUBLIC:
        op["security"] = []
    return op


def _operation_id(route: Route) -> str:
    words = [w.strip("{}") for w in route.path.strip("/").split("/")]
    return "_".join([route.method.lower(), *words]).replace("-", "_").replace(".", "_")


class Document:
    """The document for a route table: the routes' part built once, the models' per call."""

    def __init__(self, table: RouteTable, tokens: bool) -> None:
        self.tokens = tokens
        self.schemas = Schemas()
        self.paths: dict[str, dict[str, Any]] = {}
        for route in table:
            if route.method == "WEBSOCKET":
                continue  # OpenAPI 3.0 has no WebSocket operations; docs/api.md lists them
            if not route.api:
                continue  # pages for people (the console): docs/console.md lists them
            self.paths.setdefault(route.path, {})[route.method.lower()] = operation(
                route, self.schemas, tokens
            )
        self.schemas.of(wire.InferenceResponse)

    async def build(
        self, reconciler: Reconciler, allowed: Callable[[str], bool] | None = None
    ) -> dict[str, Any]:
        """The document, with the infer paths of the ready models `allowed` accepts."""
        paths = dict(self.paths)
        names = sorted(reconciler.models)
        for i, name in enumerate(n for n in names if allowed is None or allowed(n)):
            if i and i % MODELS_PER_YIELD == 0:
                await asyncio.sleep(0)
            model = reconciler.models.get(name)
            if model is None:
                continue  # unloaded while we yielded
            ready = [v for v in model.versions.values() if v.ready]
            if ready:
                version = max(ready, key=lambda v: v.version)
                paths[f"/v2/models/{name}/infer"] = {
                    "post": _model_infer(version, model.description, self.tokens)
                }
        document: dict[str, Any] = {
            "openapi": "3.0.3",
            "info": {
                "title": "Cinfer",
                "version": __version__,
                "description": "KServe v2 / Open Inference Protocol REST API with Triton's "
                "extensions. Binary tensors: send the JSON header, then the raw bytes, with "
                "Inference-Header-Content-Length.",
            },
            "paths": paths,
            "components": {"schemas": dict(self.schemas.components)},
        }
        if self.tokens:
            document["components"]["securitySchemes"] = {
                "token": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "cinfer_<id>_<secret>",
                }
            }
            document["security"] = [{"token": []}]
        return document


def _model_infer(version: ModelVersion, description: str, tokens: bool) -> dict[str, Any]:
    config = version.config
    inputs = config.inputs or ()
    outputs = [t.name for t in config.outputs or ()]
    items = [
        {
            "type": "object",
            "title": spec.name,
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string", "enum": [spec.name]},
                "datatype": {"type": "string", "enum": [spec.datatype]},
                "shape": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0},
                    "minItems": len(config.batch_shape(spec)),
                    "maxItems": len(config.batch_shape(spec)),
                    "description": f"model shape {list(config.batch_shape(spec))} (-1 = any)",
                },
                "data": {"type": "array", "items": {}},
                "parameters": {"type": "object"},
            },
        }
        for spec in inputs
    ]
    example_arrays = warmup_inputs(config)
    example: dict[str, list[dict[str, Any]]] = {
        "inputs": [
            {
                "name": spec.name,
                "shape": list(example_arrays[spec.name].shape),
                "datatype": spec.datatype,
                "data": [
                    v.decode() if isinstance(v, bytes) else v
                    for v in example_arrays[spec.name].ravel().tolist()
                ],
            }
            for spec in inputs
        ]
    }
    if version.images is not None:  # an image input's example is an image file, base64
        for tensor in example["inputs"]:
            image = version.images.inputs.get(tensor["name"])
            if image is not None:
                tensor["parameters"] = {"content_type": "base64"}
                tensor["data"] = [base64.b64encode(example_image(image.spec)).decode()]
    request = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {
                "type": "array",
                "minItems": len(items),
                "maxItems": len(items),
                "items": {"oneOf": items} if len(items) > 1 else items[0],
            },
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "enum": outputs},
                        "parameters": {"type": "object"},
                    },
                },
            },
        },
        "example": example,
    }
    summary = f"Inference on {version.name} (version {version.version}, {config.engine})"
    return {
        "summary": summary,
        "description": description or summary,
        "requestBody": {"required": True, **_json(request, "Inputs")},
        "tags": ["inference"],
        "operationId": f"infer_{version.name}",
        "responses": {
            "200": _json(_ref("InferenceResponse"), "Outputs"),
            **{
                str(status): _json(_ref("ErrorResponse"), STATUS[status])
                for status in (400, 404, 413, *((401, 403, 429) if tokens else ()), 503)
            },
        },
    }


def _openapi30(schema: Any) -> Any:
    """pydantic writes JSON Schema 2020-12; Swagger UI 4 reads OpenAPI 3.0 (nullable, enum)."""
    if isinstance(schema, list):
        return [_openapi30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _openapi30(v) for k, v in schema.items()}
    any_of = out.get("anyOf")
    if isinstance(any_of, list) and {"type": "null"} in any_of:
        rest = [s for s in any_of if s != {"type": "null"}]
        del out["anyOf"]
        if len(rest) == 1:
            out.update(rest[0] if "$ref" not in rest[0] else {"allOf": rest})
        else:
            out["anyOf"] = rest
        out["nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    return out
