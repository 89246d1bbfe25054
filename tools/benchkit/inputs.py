"""Correctly shaped inputs and the infer requests carrying them, built once before the run.

Shapes come from the model metadata: with `max_batch_size > 0` (from the configuration) the
first dim is the batch and becomes `-b`; `--shape NAME:D1,D2` gives the rest (the non-batch
dims) where the model has -1. A server without a configuration (MLServer) says nothing about
batching: there a leading -1 is taken as the batch dim, the way those models are written.

Data is zeros, random values, or perf_analyzer's JSON data file:
`{"data": [{"INPUT0": [1, 2, ...]}, {"INPUT0": {"content": [...], "shape": [2, 8]}}, ...]}`;
each entry is one request (content is the whole tensor, or one row repeated to the batch), and
the run cycles through them.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .target import BenchError, Endpoint, Model, Tensor

NUMPY = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.float32),  # kept as float32; the top 16 bits go on the wire
    "BYTES": np.dtype(object),
}
STRING_LENGTH = 16


@dataclass(frozen=True)
class Request:
    """One ready-to-write infer request: head and body, exactly as they go on the wire."""

    wire: bytes
    body_size: int
    label: str = ""
    """What it carries, for an error message (the files, with --images)."""


def parse_shape_option(text: str) -> tuple[str, tuple[int, ...]]:
    """`NAME:D1,D2,...` (perf_analyzer's --shape); the name may itself contain ':'."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d < 0 for d in shape):
        raise ValueError(f"--shape {text}: expected NAME:D1,D2,... with non-negative dims")
    return name, shape


def resolve_shapes(
    model: Model, batch: int, given: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """The full request shape of every input; BenchError naming the input when one is unknown.

    `given` holds the --shape options: the non-batch dims when the model batches, else the
    whole shape.
    """
    unknown = sorted(set(given) - {t.name for t in model.inputs})
    if unknown:
        raise BenchError(
            f"--shape names {', '.join(unknown)}, which the model does not have (its inputs: "
            f"{', '.join(t.name for t in model.inputs)})"
        )
    batching = model.max_batch_size is not None and model.max_batch_size > 0
    if batching and model.max_batch_size is not None and batch > model.max_batch_size:
        raise BenchError(f"-b {batch} exceeds the model's max_batch_size {model.max_batch_size}")
    if model.max_batch_size == 0 and batch != 1:
        raise BenchError(
            f"-b {batch}: model '{model.name}' does not batch (max_batch_size 0); give the "
            "whole shape with --shape instead"
        )
    shapes = {}
    for tensor in model.inputs:
        shapes[tensor.name] = _shape_of(tensor, batch, batching, model, given.get(tensor.name))
    return shapes


def _shape_of(
    tensor: Tensor, batch: int, batching: bool, model: Model, given: tuple[int, ...] | None
) -> tuple[int, ...]:
    declared = tensor.shape[1:] if batching else tensor.shape
    lead: tuple[int, ...] = (batch,) if batching else ()
    if given is not None:
        fixed = [(g, d) for g, d in zip(given, declared) if d != -1 and g != d]
        if len(given) != len(declared) or fixed:
            print(
                f"bench.py: warning: --shape {tensor.name}:{','.join(map(str, given))} does not "
                f"fit the model's {list(declared)}{' (after the batch dim)' if batching else ''}; "
                "sending it as given",
                file=sys.stderr,
            )
        return lead + given
    shape = list(declared)
    if model.max_batch_size is None and shape and shape[0] == -1:
        shape[0] = batch  # no configuration: a leading -1 is the batch dim
    if -1 in shape:
        hint = ",".join("D" if d == -1 else str(d) for d in shape)
        raise BenchError(
            f"input '{tensor.name}' has shape {list(tensor.shape)} with a dim of unknown size "
            f"(-1); give it with --shape {tensor.name}:{hint}"
        )
    return lead + tuple(shape)


def generate(datatype: str, shape: tuple[int, ...], kind: str, rng: np.random.Generator) -> Any:
    """Zeros or random values of `datatype` (a numpy array; BYTES elements are bytes)."""
    dtype = NUMPY[datatype]
    size = int(np.prod(shape))
    if datatype == "BYTES":
        if kind == "zero":
            return np.array([b"0"] * size, dtype=object).reshape(shape)
        digits = rng.integers(48, 58, size=(size, STRING_LENGTH), dtype=np.uint8)
        return np.array([row.tobytes() for row in digits], dtype=object).reshape(shape)
    if kind == "zero":
        return np.zeros(shape, dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype.kind in "iu":
        return rng.integers(0, 100, size=shape).astype(dtype)
    return rng.random(size=shape).astype(dtype)


def load_data_file(
    path: Path, model: Model, batch: int, given: dict[str, tuple[int, ...]]
) -> list[dict[str, np.ndarray]]:
    """The entries of a perf_analyzer-style JSON data file, as arrays of the request shapes."""
    try:
        document = json.loads(path.read_text())
        entries = document["data"]
        if not isinstance(entries, list) or not entries:
            raise ValueError("'data' must be a non-empty list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(
            f'--input-data {path}: {exc} (expected {{"data": [{{"INPUT": [...]}}, ...]}})'
        ) from None
    result = []
    for index, entry in enumerate(entries):
        where = f"--input-data {path}, entry {index}"
        if not isinstance(entry, dict):
            raise BenchError(f"{where}: expected an object of input name -> data")
        missing = [t.name for t in model.inputs if t.name not in entry]
        if missing:
            raise BenchError(f"{where}: no data for input(s) {', '.join(missing)}")
        shapes_given = dict(given)
        for name, value in entry.items():
            if isinstance(value, dict) and "shape" in value:
                shapes_given[name] = tuple(int(d) for d in value["shape"])
        shapes = resolve_shapes(model, batch, shapes_given)
        arrays = {}
        for tensor in model.inputs:
            value = entry[tensor.name]
            content = value["content"] if isinstance(value, dict) else value
            arrays[tensor.name] = _array(content, tensor, shapes[tensor.name], where)
        result.append(arrays)
    return result


def _array(content: Any, tensor: Tensor, shape: tuple[int, ...], where: str) -> np.ndarray:
    if tensor.datatype == "BYTES":
        flat = np.array(
            [s.encode() if isinstance(s, str) else bytes(s) for s in np.ravel(content)],
            dtype=object,
        )
    else:
        try:
            flat = np.asarray(content, dtype=NUMPY[tensor.datatype]).ravel()
        except (TypeError, ValueError) as exc:
            raise BenchError(f"{where}: input '{tensor.name}': {exc}") from None
    size = int(np.prod(shape))
    row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if flat.size == size:
        return flat.reshape(shape)
    if flat.size == row and size % row == 0:  # one row, repeated to the batch
        return np.concatenate([flat] * (size // row)).reshape(shape)
    raise BenchError(
        f"{where}: input '{tensor.name}' has {flat.size} values; shape {list(shape)} needs "
        f"{size}" + (f" (or {row} for one row)" if row != size else "")
    )


def _raw(datatype: str, array: np.ndarray) -> bytes:
    """Triton's binary tensor bytes: little-endian, row-major; BYTES length-prefixed."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in array.ravel())
    if datatype == "BF16":
        bits = np.ascontiguousarray(array, dtype="<f4").view("<u4") >> 16
        return bits.astype("<u2").tobytes()
    return np.ascontiguousarray(array, dtype=NUMPY[datatype].newbyteorder("<")).tobytes()


def _json_data(datatype: str, array: np.ndarray) -> list[Any]:
    if datatype == "BYTES":
        return [b.decode("utf-8", "replace") for b in array.ravel()]
    return array.ravel().tolist()  # type: ignore[no-any-return]


def encode_body(
    model: Model, arrays: dict[str, np.ndarray], binary: bool, files: str | None = None
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None) of one infer request in KServe v2 form.

    `files` names the BYTES input whose elements are files (--images): in JSON they go as
    base64 with `"parameters": {"content_type": "base64"}`, as MLServer and this server take
    files.
    """
    inputs: list[dict[str, Any]] = []
    raw: list[bytes] = []
    for tensor in model.inputs:
        array = arrays[tensor.name]
        entry: dict[str, Any] = {
            "name": tensor.name,
            "shape": list(array.shape),
            "datatype": tensor.datatype,
        }
        if binary:
            data = _raw(tensor.datatype, array)
            entry["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        elif tensor.name == files:
            entry["parameters"] = {"content_type": "base64"}
            entry["data"] = [base64.b64encode(b).decode("ascii") for b in array.ravel()]
        else:
            entry["data"] = _json_data(tensor.datatype, array)
        inputs.append(entry)
    request: dict[str, Any] = {"inputs": inputs}
    if binary:
        # perf_analyzer asks for every output as binary; with no outputs in the metadata, the
        # request-level flag does the same.
        if model.outputs:
            request["outputs"] = [
                {"name": n, "parameters": {"binary_data": True}} for n in model.outputs
            ]
        else:
            request["parameters"] = {"binary_data_output": True}
    header = json.dumps(request, separators=(",", ":")).encode()
    if not binary:
        return header, None
    return header + b"".join(raw), len(header)


def build_requests(
    endpoint: Endpoint,
    model: Model,
    entries: list[dict[str, np.ndarray]],
    binary: bool,
    files: str | None = None,
    labels: list[str] | None = None,
) -> list[Request]:
    """The complete HTTP/1.1 infer requests (head and body), one per data entry."""
    requests = []
    for index, arrays in enumerate(entries):
        body, header_length = encode_body(model, arrays, binary, files)
        content_type = "application/octet-stream" if binary else "application/json"
        label = labels[index] if labels else ""
        requests.append(infer_request(endpoint, model, body, content_type, header_length, label))
    return requests


def infer_request(
    endpoint: Endpoint,
    model: Model,
    body: bytes,
    content_type: str,
    header_length: int | None = None,
    label: str = "",
) -> Request:
    """`body` as a complete HTTP/1.1 POST to the model's infer URL."""
    headers = {
        "host": ("Host", endpoint.host_header),
        "content-type": ("Content-Type", content_type),
    }
    if header_length is not None:
        headers["inference-header-content-length"] = (
            "Inference-Header-Content-Length",
            str(header_length),
        )
    for name, value in endpoint.headers:  # -H replaces a default of the same name
        headers[name.lower()] = (name, value)
    headers["content-length"] = ("Content-Length", str(len(body)))
    head = f"POST {endpoint.prefix}{model.path}/infer HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.values()
    )
    return Request((head + "\r\n").encode("latin-1") + body, len(body), label)


def parse_header_option(text: str) -> tuple[str, str]:
    """`-H "Name: value"`; the framing headers stay bench.py's."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c in name for c in " \t\r\n"):
        raise ValueError(f"-H {text!r}: expected 'Name: value'")
    if name.lower() in ("content-length", "transfer-encoding", "connection"):
        raise ValueError(f"-H {name}: bench.py sets this header itself")
    if "\r" in value or "\n" in value:
        raise ValueError(f"-H {name}: a header value cannot contain a line break")
    return name, value.strip()
