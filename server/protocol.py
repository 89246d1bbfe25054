"""The KServe v2 / Open Inference Protocol infer body: decoding requests, encoding responses.

Both JSON tensors and Triton's binary tensor data extension:

    POST .../infer
    Inference-Header-Content-Length: <bytes of the JSON header>
    <JSON header><raw tensor bytes, in the order the header lists them>

This is the hot path: JSON goes through orjson, tensor data through numpy (no per-element
Python loops except for BYTES elements, which are variable-length by nature).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .datatypes import BF16, JSON_DECODE, NUMPY, datatype_of
from .errors import InvalidRequest, PayloadTooLarge, Unsupported

_U32 = struct.Struct("<I")
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class InferInput:
    name: str
    datatype: str
    array: np.ndarray


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(slots=True)
class InferRequest:
    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None
    id: Any = None
    parameters: dict[str, Any] | None = None
    binary_output: bool = False
    """Request-level ``binary_data_output``: every output binary unless it says otherwise."""

    @property
    def output_names(self) -> list[str] | None:
        return [o.name for o in self.outputs] if self.outputs is not None else None


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate``; the inflated size is bounded by `limit`."""
    if not encoding or encoding == "identity":
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise Unsupported(f"unsupported Content-Encoding {encoding!r} (use gzip or deflate)")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"body is not valid {encoding} data: {exc}") from exc
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body exceeds max_request_bytes ({limit} bytes)")
    return data


def compress(body: bytes, accept_encoding: str | None) -> tuple[bytes, str | None]:
    """Compress a response when the client asked for gzip or deflate (tritonclient can)."""
    if not accept_encoding:
        return body, None
    accepted = {part.split(";")[0].strip() for part in accept_encoding.lower().split(",")}
    if "gzip" in accepted:
        deflater = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return deflater.compress(body) + deflater.flush(), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 1), "deflate"
    return body, None


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer body, JSON or JSON header + binary tensors, into numpy arrays."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise InvalidRequest(
                f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
            ) from None
        if not 0 < split <= len(body):
            raise InvalidRequest(
                f"Inference-Header-Content-Length {split} does not fit a body of {len(body)} bytes"
            )
        header_bytes: bytes | memoryview = memoryview(body)[:split]
    else:
        split = len(body)
        header_bytes = body
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON in the inference request: {exc}") from exc
    if not isinstance(header, dict):
        raise InvalidRequest("the inference request must be a JSON object")
    unknown = set(header) - {"id", "parameters", "inputs", "outputs"}
    if unknown:
        raise InvalidRequest(f"unknown field(s) in the inference request: {sorted(unknown)}")
    parameters = _parameters(header.get("parameters"), "request")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest("the inference request needs 'inputs', a non-empty list")
    binary = memoryview(body)
    offset = split
    inputs = []
    for index, raw in enumerate(raw_inputs):
        tensor, offset = _input(raw, index, binary, offset)
        inputs.append(tensor)
    if offset != len(body):
        raise InvalidRequest(
            f"the body has {len(body) - offset} bytes of binary data that no input claims "
            "(check binary_data_size)"
        )
    outputs = _outputs(header.get("outputs"))
    binary_output = bool(parameters.get("binary_data_output", False)) if parameters else False
    if parameters:
        _check_reserved(parameters)
    return InferRequest(inputs, outputs, header.get("id"), parameters, binary_output)


def _parameters(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(f"'parameters' of the {where} must be a JSON object")
    return value


def _check_reserved(parameters: dict[str, Any]) -> None:
    for name in ("sequence_id", "sequence_start", "sequence_end"):
        if parameters.get(name):
            raise InvalidRequest(
                f"parameter {name!r}: sequence batching is not supported by this model"
            )


def _input(raw: Any, index: int, body: memoryview, offset: int) -> tuple[InferInput, int]:
    if not isinstance(raw, dict):
        raise InvalidRequest(f"inputs[{index}] must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"inputs[{index}] needs a 'name' (a string)")
    datatype = raw.get("datatype")
    if datatype not in NUMPY:
        raise InvalidRequest(
            f"input '{name}': unknown datatype {datatype!r} (KServe v2 datatypes: "
            f"{', '.join(NUMPY)})"
        )
    shape = raw.get("shape")
    if (
        not isinstance(shape, list)
        or not all(type(d) is int and d >= 0 for d in shape)  # bool is not a dim
    ):
        raise InvalidRequest(
            f"input '{name}': 'shape' must be a list of non-negative integers, got {shape!r}"
        )
    count = 1
    for dim in shape:
        count *= dim
    parameters = _parameters(raw.get("parameters"), f"input '{name}'")
    size = parameters.get("binary_data_size") if parameters else None
    if size is not None:
        if "data" in raw:
            raise InvalidRequest(
                f"input '{name}': give either 'data' or binary_data_size, not both"
            )
        if type(size) is not int or size < 0:
            raise InvalidRequest(f"input '{name}': binary_data_size must be a non-negative integer")
        end = offset + size
        if end > len(body):
            raise InvalidRequest(
                f"input '{name}': binary_data_size {size} runs past the end of the body "
                f"({len(body) - offset} bytes left)"
            )
        array = _from_binary(name, datatype, shape, count, body[offset:end])
        return InferInput(name, datatype, array), end
    if "data" not in raw:
        raise InvalidRequest(f"input '{name}' has neither 'data' nor binary_data_size")
    return InferInput(name, datatype, _from_json(name, datatype, shape, count, raw["data"])), offset


def _from_json(name: str, datatype: str, shape: list[int], count: int, data: Any) -> np.ndarray:
    if datatype == "BYTES":
        array = _strings(name, data)
    else:
        try:
            parsed = np.asarray(data)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"input '{name}': 'data' is not a regular array: {exc}") from exc
        kind = parsed.dtype.kind
        if datatype == "BOOL":
            if kind != "b" and parsed.size:
                raise InvalidRequest(f"input '{name}': BOOL data must be true/false values")
            array = parsed.astype(np.bool_, copy=False)
        else:
            if kind not in "biuf" or (kind == "b" and parsed.size):
                raise InvalidRequest(
                    f"input '{name}': {datatype} data must be numbers, got {_kind_name(parsed)}"
                )
            target = JSON_DECODE[datatype]
            if target.kind in "iu":
                if kind == "f" and parsed.size:
                    raise InvalidRequest(f"input '{name}': {datatype} data must be integers")
                info = np.iinfo(target)
                if parsed.size and (parsed.min() < info.min or parsed.max() > info.max):
                    raise InvalidRequest(
                        f"input '{name}': value out of range for {datatype} "
                        f"[{info.min}, {info.max}]"
                    )
            array = parsed.astype(target, copy=False)
            if datatype == "BF16":
                array = array.astype(BF16)
    if array.size != count:
        raise InvalidRequest(
            f"input '{name}': shape {shape} needs {count} elements, 'data' has {array.size}"
        )
    return array.reshape(shape)


def _kind_name(array: np.ndarray) -> str:
    return {"U": "strings", "S": "strings", "O": "mixed or null values"}.get(
        array.dtype.kind, str(array.dtype)
    )


def _strings(name: str, data: Any) -> np.ndarray:
    flat: list[bytes] = []
    stack = [data] if not isinstance(data, list) else list(reversed(data))
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            flat.append(item.encode())
        elif isinstance(item, list):
            stack.extend(reversed(item))
        else:
            raise InvalidRequest(f"input '{name}': BYTES data must be strings, got {item!r:.40}")
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array


def _from_binary(
    name: str, datatype: str, shape: list[int], count: int, chunk: memoryview
) -> np.ndarray:
    if datatype == "BYTES":
        return _decode_bytes(name, chunk, count).reshape(shape)
    dtype = NUMPY[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise InvalidRequest(
            f"input '{name}': shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
            f"binary_data_size is {len(chunk)}"
        )
    array = np.frombuffer(chunk, dtype=dtype).reshape(shape)
    if datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise InvalidRequest(f"input '{name}': BOOL bytes must be 0 or 1")
    return array


def _decode_bytes(name: str, chunk: memoryview, count: int) -> np.ndarray:
    """Each element: a 4-byte little-endian length, then that many bytes."""
    raw = chunk.tobytes()
    out = np.empty(count, dtype=object)
    pos, end = 0, len(raw)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidRequest(f"input '{name}': BYTES data ends after {i} of {count} elements")
        (length,) = _U32.unpack_from(raw, pos)
        pos += 4
        if pos + length > end:
            raise InvalidRequest(
                f"input '{name}': BYTES element {i} claims {length} bytes, only "
                f"{end - pos} are left"
            )
        out[i] = raw[pos : pos + length]
        pos += length
    if pos != end:
        raise InvalidRequest(
            f"input '{name}': {end - pos} bytes left over after {count} BYTES elements"
        )
    return out


def _outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidRequest("'outputs' must be a list")
    outputs = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidRequest(f"outputs[{index}] must be an object with a 'name'")
        parameters = _parameters(item.get("parameters"), f"output '{item['name']}'") or {}
        if parameters.get("classification"):
            raise Unsupported(
                f"output '{item['name']}': the classification extension is not supported"
            )
        outputs.append(RequestedOutput(item["name"], bool(parameters.get("binary_data", False))))
    return outputs


def encode_response(
    model_name: str,
    model_version: int,
    request: InferRequest,
    results: Mapping[str, np.ndarray],
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    if request.outputs is None:
        wanted = [(name, request.binary_output) for name in results]
    else:
        wanted = [(o.name, o.binary) for o in request.outputs]
    entries = []
    blobs: list[Any] = []
    for name, binary in wanted:
        array = results[name]
        datatype = datatype_of(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = _to_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _to_json(array, datatype)
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = entries
    header = orjson.dumps(response, option=_JSON_OPTIONS)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _to_json(array: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        return [
            v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v)
            for v in array.ravel()
        ]
    flat = np.ascontiguousarray(array).reshape(-1)
    if datatype == "BF16":
        return flat.astype(np.float32)
    if flat.dtype.byteorder == ">":
        return flat.astype(flat.dtype.newbyteorder("<"))
    return flat


def _to_binary(array: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        parts = []
        for value in array.ravel():
            data = value if isinstance(value, bytes) else str(value).encode()
            parts.append(_U32.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.dtype.byteorder == ">":
        flat = flat.astype(flat.dtype.newbyteorder("<"))
    return flat.view(np.uint8).data
