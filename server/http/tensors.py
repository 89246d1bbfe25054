"""Tensor data in and out of the REST body: JSON lists and raw bytes to numpy arrays and back.

Vectorised with numpy: no per-element Python loops except for BYTES elements, which are
variable-length by nature (and `first_not`, which walks the data only to word an error).
codec.py decides where each tensor's data is; this module converts it.
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Any

import numpy as np

from ..datatypes import BF16, JSON_DECODE, NUMPY
from ..errors import InvalidRequest, show

U32 = struct.Struct("<I")


def reshape(name: str, array: np.ndarray, shape: list[int]) -> np.ndarray:
    try:
        return array.reshape(shape)
    except ValueError as exc:  # an empty tensor with dims numpy cannot index
        raise InvalidRequest(f"input '{name}': shape {shape} is too large: {exc}") from None


def from_json(name: str, datatype: str, shape: list[int], count: int, data: Any) -> np.ndarray:
    if datatype == "BYTES":
        array = strings(name, data)
    else:
        try:
            parsed = np.asarray(data)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"input '{name}': 'data' is not a regular array: {exc}") from exc
        kind = parsed.dtype.kind
        if datatype == "BOOL":
            if kind != "b" and parsed.size:
                raise InvalidRequest(
                    f"input '{name}': BOOL data must be true/false values, got "
                    f"{first_not(data, bool)}"
                )
            array = parsed.astype(np.bool_, copy=False)
        else:
            if kind not in "biuf" or (kind == "b" and parsed.size):
                raise InvalidRequest(
                    f"input '{name}': {datatype} data must be numbers, got "
                    f"{first_not(data, int, float)}"
                )
            target = JSON_DECODE[datatype]
            if target.kind in "iu":
                if kind == "f" and parsed.size:
                    raise InvalidRequest(
                        f"input '{name}': {datatype} data must be integers, got "
                        f"{first_not(data, int)}"
                    )
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
    return reshape(name, array, shape)


def first_not(data: list[Any], *types: type) -> str:
    """The first element of nested `data` whose type is none of `types`, shown as JSON (only
    on the error path: the decode itself never walks the elements in Python)."""
    stack = list(reversed(data))
    while stack:
        item = stack.pop()
        if type(item) is list:
            stack.extend(reversed(item))
        elif type(item) not in types:
            return show(item)
    return "a mix of types"


def strings(name: str, data: list[Any]) -> np.ndarray:
    flat: list[bytes] = []
    stack = list(reversed(data))
    while stack:
        item = stack.pop()
        if type(item) is str:
            flat.append(item.encode())
        elif type(item) is list:
            stack.extend(reversed(item))
        else:
            raise InvalidRequest(f"input '{name}': BYTES data must be strings, got {show(item)}")
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array


def from_base64(name: str, array: np.ndarray) -> np.ndarray:
    """BYTES elements sent as base64 text (``"parameters": {"content_type": "base64"}``)."""
    out = np.empty(array.shape, dtype=object)
    flat, decoded = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat):
        try:
            decoded[i] = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                f"input '{name}' element {i}: not base64 (parameters.content_type is \"base64\")"
            ) from None
    return out


def from_binary(
    name: str, datatype: str, shape: list[int], count: int, chunk: memoryview
) -> np.ndarray:
    if datatype == "BYTES":
        return reshape(name, decode_bytes(name, chunk, count), shape)
    dtype = NUMPY[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise InvalidRequest(
            f"input '{name}': shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
            f"binary_data_size is {len(chunk)}"
        )
    array = reshape(name, np.frombuffer(chunk, dtype=dtype), shape)
    if datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise InvalidRequest(f"input '{name}': BOOL bytes must be 0 or 1")
    return array


def decode_bytes(name: str, chunk: memoryview, count: int) -> np.ndarray:
    """Each element: a 4-byte little-endian length, then that many bytes."""
    if count > len(chunk) // 4:  # before allocating `count` slots for a shape a client chose
        raise InvalidRequest(
            f"input '{name}': {count} BYTES elements need at least {4 * count} bytes (a 4-byte "
            f"length each), binary_data_size is {len(chunk)}"
        )
    raw = chunk.tobytes()
    out = np.empty(count, dtype=object)
    pos, end = 0, len(raw)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidRequest(f"input '{name}': BYTES data ends after {i} of {count} elements")
        (length,) = U32.unpack_from(raw, pos)
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


def to_json(array: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        return [
            v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v)
            for v in array.ravel()
        ]
    flat = array.reshape(-1) if array.flags.c_contiguous else np.ascontiguousarray(array).ravel()
    if datatype == "BF16":
        return flat.astype(np.float32)
    if flat.dtype.byteorder == ">":
        return flat.astype(flat.dtype.newbyteorder("<"))
    return flat


def to_binary(array: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        parts = []
        for value in array.ravel():
            data = value if isinstance(value, bytes) else str(value).encode()
            parts.append(U32.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    if datatype == "BF16":
        array = array.view(np.uint16)
    elif array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    # A C-contiguous array exports its buffer as is: b"".join copies it once, into the body.
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)
