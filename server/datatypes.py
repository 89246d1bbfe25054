"""KServe v2 datatypes and their numpy, Triton-config and wire forms.

numpy has no bfloat16; `ml_dtypes.bfloat16` is the numpy dtype the wider ecosystem (JAX,
ONNX, TensorFlow) agreed on, so BF16 tensors are carried as such arrays end to end.
BYTES tensors are numpy object arrays whose elements are `bytes`.
"""

from __future__ import annotations

from typing import Literal

import ml_dtypes
import numpy as np

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
]

BF16 = np.dtype(ml_dtypes.bfloat16)

#: KServe datatype -> numpy dtype (little-endian, as the binary extension sends it).
NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": BF16,
    "BYTES": np.dtype(object),
}

#: numpy dtype -> KServe datatype (object arrays are BYTES).
FROM_NUMPY: dict[np.dtype, str] = {dtype: name for name, dtype in NUMPY.items()}
FROM_NUMPY[np.dtype("S")] = "BYTES"
FROM_NUMPY[np.dtype("U")] = "BYTES"

#: KServe datatype -> Triton model-configuration data_type.
TRITON: dict[str, str] = {name: f"TYPE_{name}" for name in NUMPY}
TRITON["BYTES"] = "TYPE_STRING"

#: The JSON `data` of these datatypes is decoded through this dtype first (JSON has no bf16).
JSON_DECODE: dict[str, np.dtype] = {**NUMPY, "BF16": np.dtype(np.float32)}


def datatype_of(array: np.ndarray) -> str:
    """The KServe datatype of an array an engine returned."""
    dtype = array.dtype
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return FROM_NUMPY[dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype]
    except KeyError:
        raise TypeError(f"numpy dtype {dtype} has no KServe v2 datatype") from None
