"""The OpenAPI document, generated from the wire types and from each loaded model's schema.

Every READY model gets its own infer path whose request schema names its inputs, datatypes
and shapes, with a ready-to-send example. `/docs` renders it with Swagger UI from the
`swagger-ui-bundle` package's files, served locally (no CDN).
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from .. import __version__, wire
from ..models import ModelVersion, warmup_inputs
from ..reconciler import Reconciler

REF = "#/components/schemas/{model}"

DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Cinfer API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body>
</html>
"""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _json(_ref("ErrorResponse"), "Bad request: the message names what was wrong"),
    "404": _json(_ref("ErrorResponse"), "Unknown model or version"),
    "503": _json(_ref("ErrorResponse"), "Not ready, queue full or queue timeout"),
}


def build(reconciler: Reconciler, tokens: bool = False) -> dict[str, Any]:
    """The whole document for the models loaded now; with `tokens`, every operation but the
    health probes asks for a bearer token (Swagger UI then shows its Authorize button)."""
    _, defs = models_json_schema(
        [
            (m, "validation")
            for m in (
                wire.ErrorResponse,
                wire.ServerMetadata,
                wire.ModelMetadata,
                wire.InferenceRequest,
                wire.InferenceResponse,
                wire.RepositoryIndexRequest,
                wire.RepositoryIndexEntry,
                wire.RepositoryLoadRequest,
            )
        ],
        ref_template=REF,
    )
    schemas = {name: _openapi30(schema) for name, schema in defs.get("$defs", {}).items()}
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": _simple("Liveness", "200", "The server is up")},
        "/v2/health/ready": {
            "get": _simple("Readiness: the start-up load has finished", "200", "Ready")
        },
        "/v2": {"get": _get("Server metadata", "ServerMetadata")},
        "/v2/models/{model}": {"get": _get("Model metadata", "ModelMetadata", model=True)},
        "/v2/models/{model}/ready": {"get": _simple("Model readiness", "200", "Ready", model=True)},
        "/v2/models/{model}/config": {
            "get": {
                "summary": "Model configuration (Triton's ModelConfig as JSON)",
                "parameters": [_path("model")],
                "responses": {"200": _json({"type": "object"}, "The configuration"), **ERRORS},
            }
        },
        "/v2/models/{model}/infer": {
            "post": {
                "summary": "Inference (any model)",
                "parameters": [_path("model")],
                "requestBody": {"required": True, **_json(_ref("InferenceRequest"), "Inputs")},
                "responses": {"200": _json(_ref("InferenceResponse"), "Outputs"), **ERRORS},
            }
        },
        "/v2/repository/index": {
            "post": {
                "summary": "Every model and version with its state",
                "requestBody": {"required": False, **_json(_ref("RepositoryIndexRequest"), "")},
                "responses": {
                    "200": _json(
                        {"type": "array", "items": _ref("RepositoryIndexEntry")}, "The index"
                    )
                },
            }
        },
    }
    for name in sorted(reconciler.models):
        model = reconciler.models[name]
        ready = [v for v in model.versions.values() if v.ready]
        if ready:
            version = max(ready, key=lambda v: v.version)
            paths[f"/v2/models/{name}/infer"] = {"post": _model_infer(version, model.description)}
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "Cinfer",
            "version": __version__,
            "description": "KServe v2 / Open Inference Protocol REST API. Binary tensors: send "
            "the JSON header, then the raw bytes, with Inference-Header-Content-Length.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if tokens:
        document["components"]["securitySchemes"] = {
            "token": {"type": "http", "scheme": "bearer", "bearerFormat": "cinfer_<id>_<secret>"}
        }
        document["security"] = [{"token": []}]
        for path, operations in paths.items():
            if path.startswith("/v2/health/"):
                for operation in operations.values():
                    operation["security"] = []
    return document


def _model_infer(version: ModelVersion, description: str) -> dict[str, Any]:
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
    example = {
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
        "responses": {"200": _json(_ref("InferenceResponse"), "Outputs"), **ERRORS},
    }


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _simple(summary: str, status: str, description: str, model: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {status: {"description": description}}}
    if model:
        op["parameters"] = [_path("model")]
    return op


def _get(summary: str, schema: str, model: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": _json(_ref(schema), summary), **ERRORS},
    }
    if model:
        op["parameters"] = [_path("model")]
    return op


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
