"""The console's "try it" page: one inference through the DataPlane from a form generated
from the model's inputs, its outputs as a table (top classes with their labels when the model
folder has a ``labels.txt``), its latency, and ready-to-copy calls (curl, tritonclient, the
KServe SDK) for the same request.

The request is a v2 JSON body, as the API takes it, prefilled from the schema (each dynamic
dimension 1, every value 0.5, or 1 for integers); a small numeric input can also be typed in
a grid of number fields (grid.py), and a BYTES input can take a file. It is counted in the
model's statistics like any request. The snippets carry a token placeholder, never a secret.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from ..dataplane import DataPlane
from ..errors import CinferError, InvalidRequest, NotFound
from ..http.codec import decode_request
from ..inference import InferResponse
from ..model_config import TensorSpec
from ..models import ModelVersion
from .grid import grid_tensors, grids
from .web import Visitor, Web, read_form

MAX_SHOWN = 64
"""Values of an output shown in its table row (the rest: "…")."""
MAX_TRY_BYTES = 8 * 1024 * 1024
MAX_TRY_FIELDS = 2048
"""Form fields of a try request: each cell of a grid is one (up to grid.MAX_CELLS an input)."""
TOP = 3
INTEGERS = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


def example_value(datatype: str) -> Any:
    if datatype == "BOOL":
        return True
    if datatype == "BYTES":
        return "text"
    return 1 if datatype in INTEGERS else 0.5


def example_request(inputs: tuple[TensorSpec, ...], batched: bool) -> dict[str, Any]:
    """A v2 JSON request that fits `inputs`: dynamic dimensions 1 (the batch one included)."""
    tensors = []
    for spec in inputs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        if batched:
            shape = [1, *shape]
        count = int(np.prod(shape)) if shape else 1
        tensors.append(
            {
                "name": spec.name,
                "datatype": spec.datatype,
                "shape": shape,
                "data": [example_value(spec.datatype)] * count,
            }
        )
    return {"inputs": tensors}


def pretty(body: dict[str, Any]) -> str:
    """`body` as JSON with one line per tensor: readable, and short enough to edit."""
    tensors = ",\n".join("    " + json.dumps(t) for t in body["inputs"])
    return '{\n  "inputs": [\n' + tensors + "\n  ]\n}"


def snippets(url: str, model: str, body: dict[str, Any]) -> dict[str, str]:
    """curl, tritonclient and KServe SDK calls of `model` with `body` (TOKEN: a placeholder)."""
    compact = json.dumps(body)
    curl = (
        f"curl -s -X POST {url}/v2/models/{model}/infer \\\n"
        '  -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \\\n'
        f"  -d '{compact}'"
    )
    host = url.split("://", 1)[-1]
    lines = [
        "import os",
        "import numpy as np",
        "import tritonclient.http as httpclient",
        "",
        f'client = httpclient.InferenceServerClient("{host}")',
        'headers = {"Authorization": f"Bearer {os.environ[\'TOKEN\']}"}',
        "inputs = []",
    ]
    sdk = [
        "import os",
        "from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig",
        "import numpy as np",
        "",
        'client = InferenceRESTClient(RESTConfig(protocol="v2"))',
        'headers = {"Authorization": f"Bearer {os.environ[\'TOKEN\']}"}',
        "inputs = []",
    ]
    for tensor in body["inputs"]:
        dtype = _numpy_name(tensor["datatype"])
        array = f"np.array({tensor['data']!r}, dtype={dtype}).reshape({tensor['shape']!r})"
        lines += [
            f'tensor = httpclient.InferInput("{tensor["name"]}", {tensor["shape"]!r}, '
            f'"{tensor["datatype"]}")',
            f"tensor.set_data_from_numpy({array})",
            "inputs.append(tensor)",
        ]
        sdk += [
            f'tensor = InferInput("{tensor["name"]}", {tensor["shape"]!r}, "{tensor["datatype"]}")',
            f"tensor.set_data_from_numpy({array}, binary_data=False)",
            "inputs.append(tensor)",
        ]
    lines += [
        f'result = client.infer("{model}", inputs, headers=headers)',
        "print(result.get_response())",
    ]
    sdk += [
        "import asyncio",
        "",
        "async def main():",
        f'    request = InferRequest(model_name="{model}", infer_inputs=inputs)',
        f'    answer = await client.infer("{url}", request, model_name="{model}", headers=headers)',
        "    print([(o.name, o.as_numpy().tolist()) for o in answer.outputs])",
        "    await client.close()",
        "",
        "asyncio.run(main())",
    ]
    return {"curl": curl, "tritonclient": "\n".join(lines), "KServe SDK": "\n".join(sdk)}


def _numpy_name(datatype: str) -> str:
    if datatype == "BYTES":
        return "np.object_"
    if datatype == "BOOL":
        return "np.bool_"
    if datatype == "BF16":
        return "np.float32"
    return "np." + datatype.lower().replace("fp", "float")


def labels_of(folder: Path) -> list[str]:
    try:
        text = (folder / "labels.txt").read_text(errors="replace")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines()]


def output_rows(response: InferResponse, labels: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name, array in response.outputs.items():
        flat = array.reshape(-1)
        values = [_plain(v) for v in flat[:MAX_SHOWN]]
        top = []
        classes = array.ndim >= 1 and array.shape[-1] == len(labels)
        if labels and classes and array.dtype.kind == "f":
            for scores in array.reshape(-1, len(labels))[:8]:
                order = np.argsort(scores)[::-1][:TOP]
                top.append([(labels[i], round(float(scores[i]), 4)) for i in order])
        rows.append(
            {
                "name": name,
                "datatype": str(array.dtype),
                "shape": list(array.shape),
                "data": values,
                "more": flat.size > MAX_SHOWN,
                "top": top,
            }
        )
    return rows


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode(errors="replace")
    return value.item() if hasattr(value, "item") else value


class TryPages:
    """GET and POST /console/models/{model}/try."""

    def __init__(self, web: Web, dataplane: DataPlane) -> None:
        self.web = web
        self.dataplane = dataplane

    def _version(self, name: str) -> ModelVersion:
        model = self.dataplane.reconciler.models.get(name)
        if model is None:
            raise NotFound(f"no model {name!r} in the repository")
        return model.get(None)  # the default version: the highest READY one, or 404

    def _context(
        self,
        request: Request,
        name: str,
        version: ModelVersion,
        form: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """What the try page shows; `form`: the submitted one, whose grid values it keeps."""
        config = version.config
        inputs, batched = config.inputs or (), config.max_batch_size > 0
        example = example_request(inputs, batched)
        url = f"{request.url.scheme}://{request.url.netloc}{request.scope.get('root_path', '')}"
        shown = grids(inputs, batched, form)
        return {
            "page": "models",
            "name": name,
            "model_version": version.version,
            "inputs": inputs,
            "grids": shown,
            # The JSON body folded away only while grids give every input.
            "json_open": len(shown) < len(inputs) or not all(g.from_grid for g in shown),
            "example": pretty(example),
            "snippets": snippets(url, name, example),
        }

    async def form(self, request: Request, visitor: Visitor) -> Response:
        name = request.path_params["model"]
        version = self._version(name)
        context = self._context(request, name, version)
        return self.web.render(
            request, "try.html", visitor, body=context["example"], result=None, error="",
            **context,
        )  # fmt: skip

    async def run(self, request: Request, visitor: Visitor, form: dict[str, Any]) -> Response:
        self.web.check_csrf(visitor, form.get("csrf") or request.headers.get("x-csrf-token"))
        name = request.path_params["model"]
        version = self._version(name)
        context = self._context(request, name, version, form)
        body = str(form.get("body", ""))
        try:
            config = version.config
            payload, header = _request(body, form, config.inputs or (), config.max_batch_size > 0)
            started = time.perf_counter()
            response = await self.dataplane.exchange(
                name, None, lambda: decode_request(payload, header), lambda r: r
            )
            latency_ms = (time.perf_counter() - started) * 1000
        except CinferError as exc:
            if exc.status_code >= 500:
                raise
            return self.web.render(
                request, "try.html", visitor, exc.status_code, body=body, result=None,
                error=exc.message, **context,
            )  # fmt: skip
        labels = await asyncio.to_thread(labels_of, version.folder.parent)
        result = {
            "model_version": response.model_version,
            "latency_ms": round(latency_ms, 2),
            "outputs": output_rows(response, labels),
        }
        return self.web.render(
            request, "try.html", visitor, body=body, result=result, error="", **context
        )


def _request(
    body: str, form: dict[str, Any], inputs: tuple[TensorSpec, ...], batched: bool
) -> tuple[bytes, str | None]:
    """The request to decode: the JSON body as it is, or with the inputs the form gives
    otherwise in place of the body's: a grid's values (grid.py), and, when a file was chosen
    for a BYTES input, the binary-extension request with that file as the input's one element
    (what tritonclient sends for an ``np.object_`` array of file bytes)."""
    typed = grid_tensors(inputs, batched, form)
    files = {
        spec.name: (spec, form[f"file_{spec.name}"])
        for spec in inputs
        if spec.datatype == "BYTES" and isinstance(form.get(f"file_{spec.name}"), bytes)
    }
    if not files and not typed:
        return body.encode(), None
    try:
        data = orjson.loads(body) if body.strip() else {"inputs": []}
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("inputs", []), list):
        raise InvalidRequest("the request must be a JSON object with an 'inputs' list")
    kept = [
        t
        for t in data.get("inputs", [])
        if not isinstance(t, dict) or (t.get("name") not in files and t.get("name") not in typed)
    ]
    kept += typed.values()
    binary = b""
    for name, (spec, content) in files.items():
        element = len(content).to_bytes(4, "little") + content
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        kept.append(
            {
                "name": name,
                "datatype": "BYTES",
                "shape": [1, *shape] if batched else shape,
                "parameters": {"binary_data_size": len(element)},
            }
        )
        binary += element
    data["inputs"] = kept
    header = orjson.dumps(data)
    return (header + binary, str(len(header))) if files else (header, None)


async def read_try_form(request: Request) -> dict[str, Any]:
    """The try form: text fields as str, chosen files as bytes (at most MAX_TRY_BYTES)."""
    form = await read_form(
        request, MAX_TRY_BYTES, "a try-it request", files=16, fields=MAX_TRY_FIELDS
    )
    fields: dict[str, Any] = {}
    try:
        for key, value in form.items():
            if isinstance(value, UploadFile):
                content = await value.read()
                if content:
                    fields[key] = content
            else:
                fields[key] = value
    finally:
        await form.close()  # the spooled files
    return fields
