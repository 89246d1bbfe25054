"""The model run by a server (``--url``): each piece is a POST to its v2 infer URL, with
``--concurrency`` of them in flight, so the server's batcher joins them as it would any
client's. Rows go as binary tensors (Triton's extension) or, with ``--json``, as JSON;
files (an image input's) as a multipart form, one field of several files; a JSONL line as
the body it is.

A 503 or 429 (queue full, model reloading, rate limit), or a connection that fails, is tried
again with exponential backoff (honouring Retry-After), ``--retries`` times; then the run
stops with its checkpoint written, to be resumed. A 4xx/500 for a piece is its rows' error; a
401, 403 or 404 stops the run (no row would fare better).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import orjson

from ..errors import CinferError
from ..http.tensors import from_binary, from_json, to_binary
from .local import split_error
from .rows import Answer, Piece, Schema, TargetFailed, Tensor

RETRY_STATUSES = {429, 502, 503, 504}
FATAL_STATUSES = {401, 403, 404}
MAX_DELAY = 10.0


class Remote:
    def __init__(
        self,
        client: httpx.AsyncClient,
        path: str,
        schema: Schema,
        concurrency: int,
        retries: int,
        binary: bool,
        classification: int,
    ) -> None:
        self.client = client
        self.path = path
        self.schema = schema
        self.concurrency = concurrency
        self.retries = retries
        self.binary = binary
        self.classification = classification

    @classmethod
    async def connect(
        cls,
        client: httpx.AsyncClient,
        model: str,
        version: str | None,
        concurrency: int,
        retries: int,
        binary: bool,
        classification: int,
    ) -> Remote:
        """The server's schema for the model (its metadata and configuration)."""
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
        probe = cls(client, path, Schema(model, "", (), (), 0), 1, retries, binary, 0)
        metadata = (await probe._send("GET", path, None, {})).json()
        config = (await probe._send("GET", f"{path}/config", None, {})).json()
        types = {t["name"]: t["datatype"] for t in metadata["outputs"]}
        outputs = tuple(types)
        labelled = tuple(t["name"] for t in config.get("output", []) if t.get("label_filename"))
        if classification:
            outputs = labelled or outputs
            types = dict.fromkeys(outputs, "BYTES")
        versions = metadata.get("versions") or [""]
        schema = Schema(
            model=model,
            version=version or max(versions, key=lambda v: (len(v), v)),
            inputs=tuple(
                Tensor(t["name"], t["datatype"], tuple(t["shape"])) for t in metadata["inputs"]
            ),
            outputs=outputs,
            max_batch_size=int(config.get("max_batch_size", 0)),
            output_types=tuple(types[name] for name in outputs),
        )
        return cls(client, path, schema, concurrency, retries, binary, classification)

    def describe(self) -> str:
        """Where the run's rows go, for its first line."""
        return (
            f"model {self.schema.model} version {self.schema.version} on {self.client.base_url}"
            f": {self.concurrency} request{'s' if self.concurrency > 1 else ''} in flight"
        )

    def window(self) -> tuple[int, int]:
        rows = self.concurrency * max(1, self.schema.max_batch_size)
        return rows, self.concurrency

    async def infer(self, piece: Piece) -> list[Answer]:
        response = await self._send("POST", f"{self.path}/infer", *self._body(piece))
        if response.status_code != 200:
            if piece.count > 1 and not piece.whole:
                parts = await asyncio.gather(*(self.infer(row) for row in piece.rows()))
                return [answer for part in parts for answer in part]
            return [Answer(piece, None, _message(response))]
        try:
            outputs, version, id = _decoded(response)
        except (CinferError, ValueError, KeyError, TypeError) as exc:
            return [Answer(piece, None, f"the server's answer cannot be read: {exc}")]
        stacked = self.schema.stacked if len(self.schema.inputs) == 1 else True
        error = split_error(outputs, piece, stacked)
        if error:
            return [Answer(piece, None, error)]
        return [Answer(piece, outputs, None, version, id)]

    def _body(self, piece: Piece) -> tuple[Any, dict[str, Any]]:
        data = piece.data
        if isinstance(data, bytes):
            return data, {"headers": {"content-type": "application/json"}}
        assert data is not None
        tensor = self.schema.inputs[0]
        array = data if self.schema.stacked else data[0]
        if tensor.datatype == "BYTES":  # files (images), as a form: one field, several files
            names = piece.names or [str(i) for i in range(piece.count)]
            files = [(tensor.name, (n, f, "application/octet-stream")) for n, f in zip(names, data)]
            params = {"classification": str(self.classification)} if self.classification else {}
            return None, {"files": files, "params": params}
        wanted = [
            {"name": name, "parameters": self._output_parameters()} for name in self.schema.outputs
        ]
        entry: dict[str, Any] = {
            "name": tensor.name,
            "shape": list(array.shape),
            "datatype": tensor.datatype,
        }
        if not self.binary:
            entry["data"] = _json_data(array, tensor.datatype)
            body = orjson.dumps({"inputs": [entry], "outputs": wanted},
                                option=orjson.OPT_SERIALIZE_NUMPY)  # fmt: skip
            return body, {"headers": {"content-type": "application/json"}}
        blob = bytes(memoryview(to_binary(array, tensor.datatype)).cast("B"))
        entry["parameters"] = {"binary_data_size": len(blob)}
        header = orjson.dumps({"inputs": [entry], "outputs": wanted})
        headers = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        }
        return header + blob, {"headers": headers}

    def _output_parameters(self) -> dict[str, Any]:
        parameters: dict[str, Any] = {"binary_data": self.binary}
        if self.classification:
            parameters["classification"] = self.classification
        return parameters

    async def _send(
        self, method: str, path: str, content: Any, options: dict[str, Any]
    ) -> httpx.Response:
        """The server's answer, tried again on 429/502/503/504 and failed connections."""
        last = ""
        for attempt in range(self.retries + 1):
            try:
                response = await self.client.request(method, path, content=content, **options)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                wait = None
            else:
                if response.status_code in FATAL_STATUSES or (
                    method == "GET" and response.status_code >= 400
                    and response.status_code not in RETRY_STATUSES
                ):  # fmt: skip
                    raise TargetFailed(
                        f"{method} {path}: the server answered {response.status_code}: "
                        f"{_message(response)}"
                    )
                if response.status_code not in RETRY_STATUSES:
                    return response
                last = f"{response.status_code} {_message(response)}"
                wait = _retry_after(response)
            if attempt < self.retries:
                delay = min(MAX_DELAY, 0.25 * 2**attempt) * random.uniform(0.5, 1.0)
                await asyncio.sleep(max(delay, wait or 0.0))
        raise TargetFailed(
            f"{method} {self.client.base_url}{path}: no answer after {self.retries + 1} tries "
            f"(the last: {last})"
        )


def _json_data(array: Any, datatype: str) -> Any:
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                for v in array.reshape(-1)]  # fmt: skip
    if datatype == "BF16":
        return array.astype("float32").reshape(-1)
    return array.reshape(-1)


def _decoded(response: httpx.Response) -> tuple[dict[str, Any], str, str | None]:
    body = response.content
    length = response.headers.get("inference-header-content-length")
    split = int(length) if length else len(body)
    header = orjson.loads(body[:split])
    view, offset = memoryview(body), split
    outputs = {}
    for entry in header["outputs"]:
        name, datatype, shape = entry["name"], entry["datatype"], entry["shape"]
        count = 1
        for dim in shape:
            count *= dim
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            outputs[name] = from_binary(name, datatype, shape, count, view[offset : offset + size])
            offset += size
        else:
            outputs[name] = from_json(name, datatype, shape, count, entry["data"])
    return outputs, str(header.get("model_version", "")), header.get("id")


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return min(float(value), 60.0) if value.isdigit() else None
