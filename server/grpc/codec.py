"""ModelInferRequest / ModelInferResponse (protobuf) to and from the DataPlane's InferRequest.

Tensors come either all in `raw_input_contents` (one little-endian buffer per input, in
order: what tritonclient.grpc and perf_analyzer send; BYTES elements each a 4-byte length
and its bytes, as REST's binary extension has them) or each in its input's typed `contents`
(the field of its datatype: what the KServe SDK sends). The answer is raw when the request
was, as Triton answers, and otherwise typed; FP16 and BF16 have no typed field, so an answer
with such an output is raw throughout (`raw_output_contents` pairs with `outputs` by index).

Every check names the input and what was wrong, as the REST codec's do (same messages where
the case is the same: tensors.py does the raw bytes for both doors).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..classification import requested
from ..datatypes import FROM_NUMPY, NUMPY, datatype_of
from ..errors import InvalidRequest, show
from ..http import tensors
from ..inference import InferInput, InferRequest, InferResponse, RequestedOutput
from ..sharedmemory import Placement, Regions, locate
from .generated import grpc_service_pb2 as pb

MAX_DIMS = 32

#: datatype -> the InferTensorContents field that carries it (FP16 and BF16: none).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_FIELDS = tuple(dict.fromkeys(CONTENTS.values()))
#: Each field's values as numpy reads them before narrowing to the input's datatype.
_WIDE: dict[str, Any] = {
    "bool_contents": np.bool_,
    "int_contents": np.int64,
    "int64_contents": np.int64,
    "uint_contents": np.uint64,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}
_SEQUENCE = ("sequence_id", "sequence_start", "sequence_end")


def parameter(value: pb.InferParameter) -> Any:
    """An InferParameter's value as a plain Python value (None when unset)."""
    which = value.WhichOneof("parameter_choice")
    return None if which is None else getattr(value, which)


def parameters(params: Any) -> dict[str, Any]:
    return {key: parameter(value) for key, value in params.items()}


def decode(message: pb.ModelInferRequest, regions: Regions | None = None) -> InferRequest:
    """The request as the DataPlane takes it; a 400 naming the input for anything wrong.
    An input or output that names a shared-memory region is read from or written to it
    (`regions`, the server's), and takes no raw_input_contents buffer."""
    if not message.inputs:
        raise InvalidRequest("inputs: expected a non-empty list of tensors")
    raw = message.raw_input_contents
    inline = sum("shared_memory_region" not in t.parameters for t in message.inputs)
    if raw and len(raw) != inline:
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} buffers for {inline} inputs "
            "(send every input not in shared memory raw, or none)"
        )
    buffers = iter(raw)
    request_parameters = parameters(message.parameters) if message.parameters else None
    for key in _SEQUENCE:
        if request_parameters and request_parameters.get(key):
            raise InvalidRequest(
                f"parameters.{key}: sequence batching is not supported by this model"
            )
    inputs = []
    for index, tensor in enumerate(message.inputs):
        name = tensor.name
        if not name:
            raise InvalidRequest(f'inputs[{index}].name: expected a non-empty string, got ""')
        datatype = tensor.datatype
        if datatype not in NUMPY:
            raise InvalidRequest(
                f"input '{name}': unknown datatype {show(datatype)} (KServe v2 datatypes: "
                f"{', '.join(NUMPY)})"
            )
        shape = list(tensor.shape)
        if len(shape) > MAX_DIMS:
            raise InvalidRequest(
                f"inputs[{index}].shape: {len(shape)} dimensions, at most {MAX_DIMS} are supported"
            )
        count = 1
        for axis, dim in enumerate(shape):
            if dim < 0:
                raise InvalidRequest(
                    f"inputs[{index}].shape[{axis}]: expected a non-negative integer, got {dim}"
                )
            count *= dim
        if "shared_memory_region" in tensor.parameters:
            what = f"input '{name}'"
            area, at, size = locate(regions, parameters(tensor.parameters), f"inputs[{index}]",
                                    what)  # fmt: skip
            blob = memoryview(area.read(at, size, what))
            array = tensors.from_binary(name, datatype, shape, count, blob)
        elif raw:
            if tensor.HasField("contents"):
                raise InvalidRequest(
                    f"input '{name}': give either raw_input_contents or contents, not both"
                )
            array = tensors.from_binary(name, datatype, shape, count, memoryview(next(buffers)))
        else:
            array = _typed(name, datatype, shape, count, tensor.contents)
        inputs.append(InferInput(name, datatype, array))
    outputs = None
    if message.outputs:
        outputs = []
        for index, wanted in enumerate(message.outputs):
            if not wanted.name:
                raise InvalidRequest(f'outputs[{index}].name: expected a non-empty string, got ""')
            given = parameters(wanted.parameters)
            classes = requested(given, wanted.name)
            place = None
            if "shared_memory_region" in given:
                what = f"output '{wanted.name}'"
                area, at, size = locate(regions, given, f"outputs[{index}]", what)
                place = Placement(area, at, size, what)
            outputs.append(RequestedOutput(wanted.name, bool(raw), classes, place))
    return InferRequest(
        inputs,
        outputs,
        message.id or None,
        request_parameters,
        bool(raw),
    )


def _typed(name: str, datatype: str, shape: list[int], count: int, contents: Any) -> np.ndarray:
    """An input's typed `contents`: the field of its datatype, `count` values."""
    field = CONTENTS.get(datatype)
    if field is None:
        raise InvalidRequest(
            f"input '{name}': {datatype} has no typed contents field; send it in raw_input_contents"
        )
    values = getattr(contents, field)
    if len(values) != count:
        others = [f for f in _FIELDS if f != field and len(getattr(contents, f))]
        hint = f" ({', '.join(others)} is set instead)" if others else ""
        raise InvalidRequest(
            f"input '{name}': shape {shape} needs {count} values in contents.{field}, "
            f"got {len(values)}{hint}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
    else:
        dtype = NUMPY[datatype]
        wide: np.ndarray = np.array(values, dtype=_WIDE[field])
        if dtype.kind in "iu" and wide.size:
            info = np.iinfo(dtype)
            if wide.min() < info.min or wide.max() > info.max:
                raise InvalidRequest(
                    f"input '{name}': a value in contents.{field} is out of range for "
                    f"{datatype} ({info.min}..{info.max})"
                )
        array = wide.astype(dtype, copy=False) if wide.size else np.empty(0, dtype=dtype)
    return tensors.reshape(name, array, shape)


def encode(response: InferResponse) -> pb.ModelInferResponse:
    """The answer: raw when the request was raw (or an output has no typed field)."""
    request = response.request
    results = response.outputs
    names = list(results) if request.outputs is None else [o.name for o in request.outputs]
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version
    )
    if request.id is not None:
        message.id = request.id
    places = {o.name: o.place for o in request.outputs or () if o.place is not None}
    typed = []
    for name in names:
        array = results[name]
        datatype = FROM_NUMPY.get(array.dtype) or datatype_of(array)
        typed.append((name, array, datatype))
    raw = request.binary_output or any(
        CONTENTS.get(d) is None for n, _, d in typed if n not in places
    )
    outputs = message.outputs
    blobs = message.raw_output_contents
    for name, array, datatype in typed:
        out = outputs.add(name=name, datatype=datatype, shape=array.shape)
        place = places.get(name)
        if place is not None:  # into the client's shared memory, not the message
            written = place.write(tensors.to_binary(array, datatype))
            out.parameters["shared_memory_region"].string_param = place.region
            out.parameters["shared_memory_byte_size"].int64_param = written
            if raw:
                blobs.append(b"")  # raw_output_contents pairs with outputs by index
        elif raw:
            blob = tensors.to_binary(array, datatype)
            blobs.append(blob if isinstance(blob, bytes) else blob.tobytes())
        elif datatype == "BYTES":
            out.contents.bytes_contents.extend(
                v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()
            )
        else:
            getattr(out.contents, CONTENTS[datatype]).extend(array.ravel().tolist())
    return message
