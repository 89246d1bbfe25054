"""The KServe v2 / Open Inference Protocol infer body: decoding requests, encoding responses.

Both JSON tensors and Triton's binary tensor data extension:

    POST .../infer
    Inference-Header-Content-Length: <bytes of the JSON header>
    <JSON header><raw tensor bytes, in the order the header lists them>

This is the hot path: JSON goes through orjson, tensor data through numpy (tensors.py converts
each tensor; this module checks the body's shape and says where each tensor's data is).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from cachetools import LRUCache

from ..classification import requested
from ..datatypes import FROM_NUMPY, NUMPY, datatype_of
from ..errors import InvalidRequest, PayloadTooLarge, Unsupported, show
from ..inference import InferInput, InferRequest, InferResponse, RequestedOutput
from ..sharedmemory import Placement, Region, Regions, locate
from . import tensors

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def header_size(header_length: str, body_size: int) -> int:
    """The JSON header's size from Inference-Header-Content-Length, checked against the body."""
    text = header_length.strip()
    # Digits only: int() would also take "-1", "1_000", "+5" and non-ASCII digits.
    if not (text.isascii() and text.isdigit()):
        raise InvalidRequest(
            "Inference-Header-Content-Length must be a positive integer (the JSON header's "
            f"bytes), got {show(header_length)}"
        )
    split = int(text) if len(text) <= 20 else body_size + 1  # int() refuses 4300+ digits
    if not 0 < split <= body_size:
        raise InvalidRequest(
            f"Inference-Header-Content-Length {text[:24]} does not fit a body of {body_size} "
            "bytes (it is the size of the JSON header at the body's start)"
        )
    return split


@dataclass(slots=True, frozen=True)
class Layout:
    """A binary request's JSON header, decoded and checked once.

    Clients send the same JSON header with every request of a shape (perf_analyzer, wrk,
    tritonclient all do), so the infer endpoint keeps the layouts of recent headers: a body
    whose header bytes match skips JSON parsing and goes straight to np.frombuffer. A layout
    depends on the header bytes alone, not on any model: each model version checks a
    layout's `signature` against its schema once (ModelVersion.check).
    """

    request: InferRequest
    """The header's outputs, id and flags (no inputs)."""
    tensors: tuple[tuple[str, str, np.dtype, tuple[int, ...], int, int], ...]
    """(name, datatype, dtype, shape, offset, count) per input, in the order sent."""
    body_size: int
    signature: object = field(default_factory=object, compare=False)
    """The requests' `InferRequest.signature`: one per layout, hashed by identity."""

    @classmethod
    def of(cls, request: InferRequest, offsets: list[int | None], body_size: int) -> Layout | None:
        """The layout of a decoded request, or None when its inputs must be read per body
        (JSON data, BYTES and BOOL, whose bytes are checked element by element) or its
        outputs go to shared memory (a region is looked up per request)."""
        if request.outputs and any(o.place is not None for o in request.outputs):
            return None
        tensors = []
        for tensor, offset in zip(request.inputs, offsets):
            array = tensor.array
            if offset is None or array.dtype.kind in "Ob":
                return None
            tensors.append(
                (tensor.name, tensor.datatype, array.dtype, array.shape, offset, array.size)
            )
        bare = InferRequest(
            [],
            request.outputs,
            request.id,
            request.parameters,
            request.binary_output,
            request.model_name,
            request.model_version,
        )
        return cls(bare, tuple(tensors), body_size)

    def decode(self, body: bytes) -> InferRequest:
        """The request of a body with this layout's header."""
        bare = self.request
        inputs = [
            InferInput(name, datatype, np.frombuffer(body, dtype, count, offset).reshape(shape))
            for name, datatype, dtype, shape, offset, count in self.tensors
        ]
        return InferRequest(
            inputs,
            bare.outputs,
            bare.id,
            bare.parameters,
            bare.binary_output,
            bare.model_name,
            bare.model_version,
            self.signature,
        )


class Decoder:
    """Decodes infer bodies, remembering the layouts of recent binary headers (an LRU)."""

    def __init__(self, capacity: int = 256, regions: Regions | None = None) -> None:
        self._layouts: LRUCache[bytes, Layout | None] = LRUCache(capacity)
        self.regions = regions
        """The server's shared-memory regions, for tensors that name one."""

    def decode(self, body: bytes, header_length: str | None) -> InferRequest:
        if header_length is None:
            return decode_request(body, None, self.regions)
        key = body[: header_size(header_length, len(body))]
        try:
            layout = self._layouts[key]
        except KeyError:
            pass
        else:
            if layout is not None and layout.body_size == len(body):
                return layout.decode(body)
        request, offsets = decode_with_offsets(body, header_length, self.regions)
        self._layouts[key] = Layout.of(request, offsets, len(body))
        return request


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate``; the inflated size is bounded by `limit`."""
    if not encoding or encoding == "identity":
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise Unsupported(f"unsupported Content-Encoding {show(encoding)} (use gzip or deflate)")
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


_REQUEST_FIELDS = frozenset(
    ("id", "model_name", "model_version", "parameters", "inputs", "outputs")
)
"""The request object's members: the KServe SDK sends model_name (and may send model_version),
which `DataPlane.check_target` compares with the URL's."""

_MAX_DIMS = 64
"""numpy's limit on an array's dimensions."""


def _bad(where: dict[str, Any], key: str, path: str, expected: str) -> InvalidRequest:
    """The error for member `key` of `where` (at `path` in the body) that is not `expected`."""
    if key not in where:
        return InvalidRequest(f"{path}: missing, expected {expected}")
    return InvalidRequest(f"{path}: expected {expected}, got {show(where[key])}")


def decode_request(
    body: bytes, header_length: str | None, regions: Regions | None = None
) -> InferRequest:
    """Parse an infer body, JSON or JSON header + binary tensors, into numpy arrays (the
    tensors that name a shared-memory region read from `regions`)."""
    return decode_with_offsets(body, header_length, regions)[0]


def decode_with_offsets(
    body: bytes, header_length: str | None, regions: Regions | None = None
) -> tuple[InferRequest, list[int | None]]:
    """`decode_request`, and where each binary input's bytes start in the body (None: JSON).

    Every member is type-checked where it is read (one `type(...) is` per value: no schema
    validation per request); a wrong one is a 400 naming its path in the body, such as
    ``inputs[0].datatype: expected a string, got {}``. An optional member given as null is
    taken as absent (SDKs serialise None so).
    """
    size = len(body)
    if header_length is not None:
        split = header_size(header_length, size)
        header_bytes: bytes | memoryview = memoryview(body)[:split] if split < size else body
        view: memoryview | None = memoryview(body)
    else:
        split = size
        header_bytes = body
        view = None
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON in the inference request: {exc}") from exc
    if type(header) is not dict:
        raise InvalidRequest(f"the inference request must be a JSON object, got {show(header)}")
    for key in header:
        if key not in _REQUEST_FIELDS:
            unknown = sorted(set(header) - _REQUEST_FIELDS)
            raise InvalidRequest(f"unknown field(s) in the inference request: {show(unknown)}")
    request_id = header.get("id")
    if request_id is not None and type(request_id) is not str:
        raise _bad(header, "id", "id", "a string")
    model_name = header.get("model_name")
    if model_name is not None and type(model_name) is not str:
        raise _bad(header, "model_name", "model_name", "a string")
    model_version = header.get("model_version")
    if model_version is not None and type(model_version) is not str:
        raise _bad(header, "model_version", "model_version", "a string")
    parameters = header.get("parameters")
    binary_output = False
    if parameters is not None:
        if type(parameters) is not dict:
            raise _bad(header, "parameters", "parameters", "a JSON object")
        binary_output = _request_parameters(parameters)
    raw_inputs = header.get("inputs")
    if type(raw_inputs) is not list or not raw_inputs:
        raise _bad(header, "inputs", "inputs", "a non-empty list of tensors")
    offset = split
    inputs = []
    offsets: list[int | None] = []
    for index, raw in enumerate(raw_inputs):
        if type(raw) is not dict:
            raise InvalidRequest(f"inputs[{index}]: expected a JSON object, got {show(raw)}")
        name = raw.get("name")
        if type(name) is not str or not name:
            raise _bad(raw, "name", f"inputs[{index}].name", "a non-empty string")
        datatype = raw.get("datatype")
        if type(datatype) is not str:
            raise _bad(raw, "datatype", f"inputs[{index}].datatype", "a string")
        if datatype not in NUMPY:
            raise InvalidRequest(
                f"input '{name}': unknown datatype {show(datatype)} (KServe v2 datatypes: "
                f"{', '.join(NUMPY)})"
            )
        shape = raw.get("shape")
        if type(shape) is not list:
            raise _bad(raw, "shape", f"inputs[{index}].shape", "a list of non-negative integers")
        if len(shape) > _MAX_DIMS:
            raise InvalidRequest(
                f"inputs[{index}].shape: {len(shape)} dimensions, at most {_MAX_DIMS} are supported"
            )
        count = 1
        for axis, dim in enumerate(shape):
            if type(dim) is not int or dim < 0:  # bool is not a dim
                raise InvalidRequest(
                    f"inputs[{index}].shape[{axis}]: expected a non-negative integer, "
                    f"got {show(dim)}"
                )
            count *= dim
        params = raw.get("parameters")
        nbytes = None
        shared: tuple[Region, int, int] | None = None
        if params is not None:
            if type(params) is not dict:
                raise _bad(raw, "parameters", f"inputs[{index}].parameters", "a JSON object")
            nbytes = params.get("binary_data_size")
            if nbytes is not None and (type(nbytes) is not int or nbytes < 0):
                raise _bad(
                    params,
                    "binary_data_size",
                    f"inputs[{index}].parameters.binary_data_size",
                    "a non-negative integer",
                )
            if params.get("shared_memory_region") is not None:
                shared = locate(regions, params, f"inputs[{index}]", f"input '{name}'")
        data = raw.get("data")
        if shared is not None:
            if data is not None or nbytes is not None:
                raise InvalidRequest(
                    f"input '{name}': give one of 'data', binary_data_size or shared_memory_region"
                )
            region, at, length = shared
            blob = region.read(at, length, f"input '{name}'")
            array = tensors.from_binary(name, datatype, shape, count, memoryview(blob))
            inputs.append(InferInput(name, datatype, array))
            offsets.append(None)
        elif nbytes is not None:
            if data is not None:
                raise InvalidRequest(
                    f"input '{name}': give either 'data' or binary_data_size, not both"
                )
            if view is None:
                raise InvalidRequest(
                    f"input '{name}': binary_data_size needs the binary tensor extension "
                    "(the Inference-Header-Content-Length header is missing)"
                )
            end = offset + nbytes
            if end > size:
                raise InvalidRequest(
                    f"input '{name}': binary_data_size {nbytes} runs past the end of the body "
                    f"({size - offset} bytes left)"
                )
            array = tensors.from_binary(name, datatype, shape, count, view[offset:end])
            inputs.append(InferInput(name, datatype, array))
            offsets.append(offset)
            offset = end
        elif data is not None:
            if type(data) is not list:
                raise _bad(raw, "data", f"inputs[{index}].data", "a list")
            array = tensors.from_json(name, datatype, shape, count, data)
            if datatype == "BYTES" and params and params.get("content_type") == "base64":
                array = tensors.from_base64(name, array)  # MLServer's way to send files
            inputs.append(InferInput(name, datatype, array))
            offsets.append(None)
        else:
            raise InvalidRequest(f"input '{name}' has neither 'data' nor binary_data_size")
    if offset != size:
        raise InvalidRequest(
            f"the body has {size - offset} bytes of binary data that no input claims "
            "(check binary_data_size)"
        )
    raw_outputs = header.get("outputs")
    outputs = None if raw_outputs is None else _outputs(raw_outputs, regions)
    request = InferRequest(
        inputs, outputs, request_id, parameters, binary_output, model_name, model_version
    )
    return request, offsets


_SEQUENCE = ("sequence_id", "sequence_start", "sequence_end")
_COUNTS = ("priority", "timeout")
"""Reserved parameters that are unsigned integers (timeout in microseconds)."""


def _request_parameters(parameters: dict[str, Any]) -> bool:
    """Check the reserved request parameters; whether every output is asked for binary."""
    binary = parameters.get("binary_data_output")
    if binary is None:
        binary = False
    elif type(binary) is not bool:  # "false" is a string, not false
        raise _bad(parameters, "binary_data_output", "parameters.binary_data_output", "a boolean")
    for key in _COUNTS:
        value = parameters.get(key)
        if value is not None and (type(value) is not int or value < 0):
            raise _bad(parameters, key, f"parameters.{key}", "a non-negative integer")
    for key in _SEQUENCE:
        if parameters.get(key):
            raise InvalidRequest(
                f"parameters.{key}: sequence batching is not supported by this model"
            )
    return binary


def _outputs(raw: Any, regions: Regions | None = None) -> list[RequestedOutput]:
    if type(raw) is not list:
        raise InvalidRequest(f"outputs: expected a list, got {show(raw)}")
    outputs = []
    for index, item in enumerate(raw):
        if type(item) is not dict:
            raise InvalidRequest(f"outputs[{index}]: expected a JSON object, got {show(item)}")
        name = item.get("name")
        if type(name) is not str or not name:
            raise _bad(item, "name", f"outputs[{index}].name", "a non-empty string")
        parameters = item.get("parameters")
        binary: Any = False
        place = None
        if parameters is not None:
            if type(parameters) is not dict:
                raise _bad(item, "parameters", f"outputs[{index}].parameters", "a JSON object")
            binary = parameters.get("binary_data")
            if binary is None:
                binary = False
            elif type(binary) is not bool:  # "false" is a string, not false
                raise _bad(
                    parameters,
                    "binary_data",
                    f"outputs[{index}].parameters.binary_data",
                    "a boolean",
                )
            classes = requested(parameters, name)
            if parameters.get("shared_memory_region") is not None:
                what = f"output '{name}'"
                area, offset, size = locate(regions, parameters, f"outputs[{index}]", what)
                place = Placement(area, offset, size, what)
        else:
            classes = 0
        outputs.append(RequestedOutput(name, binary, classes, place))
    return outputs


def encode_response(response: InferResponse) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    request = response.request
    results = response.outputs
    if request.outputs is None:
        binary = request.binary_output
        wanted: Any = ((name, binary, None) for name in results)
    else:
        wanted = ((o.name, o.binary, o.place) for o in request.outputs)
    entries = []
    blobs: list[Any] = []
    for name, binary, place in wanted:
        array = results[name]
        datatype = FROM_NUMPY.get(array.dtype) or datatype_of(array)
        if place is not None:  # into the client's shared memory, not the body
            written = place.write(tensors.to_binary(array, datatype))
            entries.append(
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(array.shape),
                    "parameters": {
                        "shared_memory_region": place.region,
                        "shared_memory_byte_size": written,
                    },
                }
            )
        elif binary:
            blob = tensors.to_binary(array, datatype)
            blobs.append(blob)
            entries.append(
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": memoryview(blob).nbytes},
                }
            )
        else:
            entries.append(
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(array.shape),
                    "data": tensors.to_json(array, datatype),
                }
            )
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if request.id is not None:
        body["id"] = request.id
    body["outputs"] = entries
    header = orjson.dumps(body, option=_JSON_OPTIONS)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
