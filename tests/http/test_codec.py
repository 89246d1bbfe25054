from __future__ import annotations

import gzip
import json
import re
import struct
import zlib

import numpy as np
import orjson
import pytest

from server.datatypes import BF16, NUMPY
from server.errors import InvalidRequest, PayloadTooLarge, Unsupported, show
from server.http.codec import (
    compress,
    decode_request,
    decompress,
    encode_response,
)
from server.inference import InferRequest, InferResponse, RequestedOutput


def body(*inputs: dict, **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), str(len(head))


def bytes_blob(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


NUMERIC = [d for d in NUMPY if d not in ("BYTES", "BOOL", "BF16")]


@pytest.mark.parametrize("datatype", NUMERIC)
def test_json_numbers_of_every_datatype(datatype: str) -> None:
    request = decode_request(
        body({"name": "x", "shape": [2, 2], "datatype": datatype, "data": [1, 2, 3, 4]}), None
    )
    array = request.inputs[0].array
    assert array.dtype == NUMPY[datatype]
    assert array.tolist() == [[1, 2], [3, 4]]


def test_json_nested_data_and_bool_bf16_bytes() -> None:
    request = decode_request(
        body(
            {"name": "f", "shape": [2, 2], "datatype": "FP32", "data": [[1.5, 2], [3, 4]]},
            {"name": "b", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
            {"name": "h", "shape": [2], "datatype": "BF16", "data": [1.5, -2.0]},
            {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": [["héllo"], ["x"]]},
        ),
        None,
    )
    f, b, h, s = (i.array for i in request.inputs)
    assert f.tolist() == [[1.5, 2.0], [3.0, 4.0]]
    assert b.dtype == np.bool_ and b.tolist() == [True, False, True]
    assert h.dtype == BF16 and h.astype(np.float32).tolist() == [1.5, -2.0]
    assert s.shape == (2, 1) and s.ravel().tolist() == ["héllo".encode(), b"x"]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (
            {"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]},
            r"input 'x': shape \[3\] needs 3 elements, 'data' has 2",
        ),
        (
            {"name": "x", "shape": [2], "datatype": "FP32", "data": ["a", "b"]},
            r'input \'x\': FP32 data must be numbers, got "a"',
        ),
        (
            {"name": "x", "shape": [2], "datatype": "FP32", "data": [1, None]},
            r"input 'x': FP32 data must be numbers, got null",
        ),
        (
            {"name": "x", "shape": [2], "datatype": "FP32", "data": [[1], [2, 3]]},
            r"input 'x': 'data' is not a regular array",
        ),
        (
            {"name": "x", "shape": [1], "datatype": "INT8", "data": [300]},
            r"input 'x': value out of range for INT8 \[-128, 127\]",
        ),
        (
            {"name": "x", "shape": [1], "datatype": "INT32", "data": [1.5]},
            r"input 'x': INT32 data must be integers, got 1.5",
        ),
        (
            {"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]},
            r"input 'x': BOOL data must be true/false values, got 1",
        ),
        (
            {"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]},
            r"input 'x': BYTES data must be strings, got 1",
        ),
        (
            {"name": "x", "shape": [1], "datatype": "FLOAT", "data": [1]},
            r'input \'x\': unknown datatype "FLOAT" \(KServe v2 datatypes: BOOL, ',
        ),
        (
            {"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]},
            r"inputs\[0\]\.shape\[0\]: expected a non-negative integer, got -1",
        ),
        (
            {"name": "x", "shape": "3", "datatype": "FP32", "data": [1]},
            r'inputs\[0\]\.shape: expected a list of non-negative integers, got "3"',
        ),
        (
            {"name": "x", "shape": [1], "datatype": "FP32"},
            r"input 'x' has neither 'data' nor binary_data_size",
        ),
        (
            {"shape": [1], "datatype": "FP32", "data": [1]},
            r"inputs\[0\]\.name: missing, expected a non-empty string",
        ),
    ],
)
def test_json_input_errors_name_the_tensor(tensor: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_request(body(tensor), None)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", r"malformed JSON"),
        (b"[1, 2]", r"must be a JSON object, got \[1,2\]"),
        (b'{"inputs": []}', r"inputs: expected a non-empty list of tensors, got \[\]"),
        (b'{"id": "x"}', r"inputs: missing, expected a non-empty list of tensors"),
        (b'{"inputs": [1]}', r"inputs\[0\]: expected a JSON object, got 1"),
        (b'{"inputz": []}', r'unknown field\(s\) in the inference request: \["inputz"\]'),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "outputs": {}}',
            r"outputs: expected a list, got \{\}",
        ),
        (
            b'{"parameters": {"sequence_id": 7}, "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}',
            r"parameters.sequence_id: sequence batching is not supported",
        ),
    ],
)
def test_request_level_errors(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_request(raw, None)


def test_classification_is_read_from_the_outputs_parameters() -> None:
    raw = body(
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
        outputs=[{"name": "y", "parameters": {"classification": 2, "binary_data": True}}],
    )
    request = decode_request(raw, None)
    assert request.outputs is not None
    assert (request.outputs[0].classification, request.outputs[0].binary) == (2, True)
    for bad in (0, -1, "2", True, 1.5):
        raw = body(
            {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
            outputs=[{"name": "y", "parameters": {"classification": bad}}],
        )
        with pytest.raises(InvalidRequest, match="output 'y': classification must be"):
            decode_request(raw, None)


def test_binary_inputs_of_every_kind() -> None:
    f = np.arange(6, dtype=np.float32).reshape(2, 3)
    h = np.array([1.5, 2.5], dtype=BF16)
    b = np.array([True, False])
    strings = [b"ab", b"", "é".encode()]
    header = {
        "id": "req-7",
        "inputs": [
            {
                "name": "f",
                "shape": [2, 3],
                "datatype": "FP32",
                "parameters": {"binary_data_size": f.nbytes},
            },
            {"name": "j", "shape": [1], "datatype": "INT64", "data": [5]},
            {"name": "h", "shape": [2], "datatype": "BF16", "parameters": {"binary_data_size": 4}},
            {"name": "b", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}},
            {
                "name": "s",
                "shape": [3],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": 16},
            },
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
    }
    raw, length = binary_body(header, f.tobytes(), h.tobytes(), b.tobytes(), bytes_blob(strings))
    request = decode_request(raw, length)
    arrays = {i.name: i.array for i in request.inputs}
    assert request.id == "req-7"
    np.testing.assert_array_equal(arrays["f"], f)
    assert arrays["j"].tolist() == [5]
    assert arrays["h"].dtype == BF16 and arrays["h"].astype(np.float32).tolist() == [1.5, 2.5]
    assert arrays["b"].tolist() == [True, False]
    assert arrays["s"].tolist() == strings
    assert request.outputs == [RequestedOutput("y", True), RequestedOutput("z", False)]


@pytest.mark.parametrize(
    ("size", "blob", "length", "message"),
    [
        (
            8,
            b"\0" * 8,
            None,
            r"input 'x': shape \[3\] of FP32 needs 12 bytes, binary_data_size is 8",
        ),
        (
            12,
            b"\0" * 8,
            None,
            r"binary_data_size 12 runs past the end of the body \(8 bytes left\)",
        ),
        (12, b"\0" * 16, None, r"4 bytes of binary data that no input claims"),
        (
            12,
            b"\0" * 12,
            "abc",
            r'Inference-Header-Content-Length must be a positive integer \(the JSON header\'s bytes\), got "abc"',
        ),
        (12, b"\0" * 12, "100000", r"does not fit a body of"),
        (
            -1,
            b"",
            None,
            r"inputs\[0\]\.parameters\.binary_data_size: expected a non-negative integer, got -1",
        ),
    ],
)
def test_binary_errors(size: int, blob: bytes, length: str | None, message: str) -> None:
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": [3],
                "datatype": "FP32",
                "parameters": {"binary_data_size": size},
            }
        ]
    }
    raw, real_length = binary_body(header, blob)
    with pytest.raises(InvalidRequest, match=message):
        decode_request(raw, length or real_length)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (struct.pack("<I", 10) + b"abcd", r"BYTES element 0 claims 10 bytes, only 4 are left"),
        (struct.pack("<I", 1) + b"abcd", r"BYTES data ends after 1 of 2 elements"),
        (
            struct.pack("<I", 1) + b"a",
            r"2 BYTES elements need at least 8 bytes \(a 4-byte length each\), binary_data_size is 5",
        ),
        (bytes_blob([b"a", b"b"]) + b"zz", r"2 bytes left over after 2 BYTES elements"),
    ],
)
def test_binary_bytes_errors(blob: bytes, message: str) -> None:
    header = {
        "inputs": [
            {
                "name": "s",
                "shape": [2],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(blob)},
            }
        ]
    }
    raw, length = binary_body(header, blob)
    with pytest.raises(InvalidRequest, match=message):
        decode_request(raw, length)


def test_binary_bool_must_be_zero_or_one() -> None:
    header = {
        "inputs": [
            {"name": "b", "shape": [1], "datatype": "BOOL", "parameters": {"binary_data_size": 1}}
        ]
    }
    raw, length = binary_body(header, b"\x07")
    with pytest.raises(InvalidRequest, match="BOOL bytes must be 0 or 1"):
        decode_request(raw, length)


def test_encode_json_outputs_carry_no_parameters_and_echo_id() -> None:
    request = InferRequest(inputs=[], outputs=None, id="abc")
    results = {
        "y": np.array([[1.5, 2.0]], dtype=np.float32),
        "s": np.array([b"hi", "é".encode()], dtype=object),
        "h": np.array([0.5], dtype=np.float16),
        "b": np.array([0.25], dtype=BF16),
        "t": np.array([True]),
    }
    payload, length = encode_response(InferResponse("m", "3", results, request))
    assert length is None
    doc = orjson.loads(payload)
    assert doc["model_name"] == "m" and doc["model_version"] == "3" and doc["id"] == "abc"
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert outputs["y"] == {"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]}
    assert outputs["s"]["datatype"] == "BYTES" and outputs["s"]["data"] == ["hi", "é"]
    assert outputs["h"]["datatype"] == "FP16" and outputs["h"]["data"] == [0.5]
    assert outputs["b"]["datatype"] == "BF16" and outputs["b"]["data"] == [0.25]
    assert outputs["t"]["data"] == [True]
    assert all("parameters" not in o for o in doc["outputs"])


def test_encode_binary_outputs_subset_in_requested_order() -> None:
    request = InferRequest(
        inputs=[],
        outputs=[
            RequestedOutput("s", True),
            RequestedOutput("y", True),
            RequestedOutput("n", False),
        ],
    )
    y = np.arange(4, dtype=np.float32).reshape(2, 2)[:, ::-1]  # not contiguous
    results = {
        "y": y,
        "s": np.array([b"ab", b"c"], dtype=object),
        "n": np.array([7], np.int64),
        "unused": y,
    }
    payload, length = encode_response(InferResponse("m", "1", results, request))
    assert length is not None
    doc = orjson.loads(payload[:length])
    assert [o["name"] for o in doc["outputs"]] == ["s", "y", "n"]
    s_size = doc["outputs"][0]["parameters"]["binary_data_size"]
    y_size = doc["outputs"][1]["parameters"]["binary_data_size"]
    assert payload[length : length + s_size] == bytes_blob([b"ab", b"c"])
    y_bytes = payload[length + s_size : length + s_size + y_size]
    np.testing.assert_array_equal(np.frombuffer(y_bytes, np.float32).reshape(2, 2), y)
    assert doc["outputs"][2]["data"] == [7]
    assert len(payload) == length + s_size + y_size


def test_request_level_binary_data_output() -> None:
    raw = body(
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
        parameters={"binary_data_output": True},
    )
    request = decode_request(raw, None)
    payload, length = encode_response(
        InferResponse("m", "1", {"y": np.array([2.0], np.float32)}, request)
    )
    assert length is not None
    assert orjson.loads(payload[:length])["outputs"][0]["parameters"] == {"binary_data_size": 4}


def test_gzip_and_deflate_round_trip_and_limits() -> None:
    raw = b'{"inputs": []}' * 100
    assert decompress(gzip.compress(raw), "gzip", 10_000) == raw
    assert decompress(zlib.compress(raw), "deflate", 10_000) == raw
    with pytest.raises(PayloadTooLarge, match="decompressed body exceeds"):
        decompress(gzip.compress(b"\0" * 100_000), "gzip", 1000)
    with pytest.raises(InvalidRequest, match="not valid gzip"):
        decompress(b"garbage", "gzip", 1000)
    with pytest.raises(Unsupported, match="br"):
        decompress(raw, "br", 1000)
    packed, used = compress(raw, "gzip, deflate")
    assert used == "gzip" and gzip.decompress(packed) == raw
    packed, used = compress(raw, "deflate")
    assert used == "deflate" and zlib.decompress(packed) == raw
    assert compress(raw, "br") == (raw, None)


X = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}


def test_the_kserve_sdk_fields_are_decoded() -> None:
    request = decode_request(body(X, model_name="iris", model_version="1", id="u-1"), None)
    assert (request.model_name, request.model_version, request.id) == ("iris", "1", "u-1")
    bare = decode_request(body(X), None)
    assert (bare.model_name, bare.model_version) == (None, None)


def test_optional_members_given_as_null_are_absent() -> None:
    raw = body(
        {**X, "parameters": None},
        id=None,
        parameters=None,
        outputs=None,
        model_name=None,
        model_version=None,
    )
    request = decode_request(raw, None)
    assert request.id is None and request.outputs is None and not request.binary_output
    nulls = body(
        X,
        parameters={"binary_data_output": None},
        outputs=[{"name": "y", "parameters": {"binary_data": None}}],
    )
    assert decode_request(nulls, None).outputs == [RequestedOutput("y", False)]


@pytest.mark.parametrize("value", ["false", "no", "true", 0, 1, [], {}])
def test_binary_flags_must_be_booleans(value: object) -> None:
    with pytest.raises(
        InvalidRequest,
        match=rf"^parameters\.binary_data_output: expected a boolean, got {re.escape(orjson.dumps(value).decode())}$",
    ):
        decode_request(body(X, parameters={"binary_data_output": value}), None)
    with pytest.raises(
        InvalidRequest, match=r"^outputs\[1\]\.parameters\.binary_data: expected a boolean, got "
    ):
        decode_request(
            body(X, outputs=[{"name": "y"}, {"name": "z", "parameters": {"binary_data": value}}]),
            None,
        )


def test_binary_data_output_false_answers_json() -> None:
    request = decode_request(body(X, parameters={"binary_data_output": False}), None)
    payload, length = encode_response(
        InferResponse("m", "1", {"y": np.array([2.0], np.float32)}, request)
    )
    assert length is None and orjson.loads(payload)["outputs"][0]["data"] == [2.0]


@pytest.mark.parametrize(
    ("header_length", "message"),
    [
        ("-5", r'must be a positive integer \(the JSON header\'s bytes\), got "-5"'),
        ("+5", r'got "\+5"'),
        ("1_0", r'got "1_0"'),
        ("١٢", r"must be a positive integer"),
        ("", r'got ""'),
        ("0", r"Inference-Header-Content-Length 0 does not fit a body of"),
        ("9" * 5000, r"Inference-Header-Content-Length 9{24} does not fit a body of"),
    ],
)
def test_garbage_header_lengths(header_length: str, message: str) -> None:
    raw, _ = binary_body({"inputs": [X]})
    with pytest.raises(InvalidRequest, match=message):
        decode_request(raw, header_length)


def test_binary_data_size_without_the_header_length() -> None:
    raw = body(
        {"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}
    )
    with pytest.raises(
        InvalidRequest, match=r"input 'x': binary_data_size needs the binary tensor extension"
    ):
        decode_request(raw, None)


@pytest.mark.parametrize(
    "shape",
    [[0, 2**62], [0, 2**63 - 1, 2**63 - 1]],
)
@pytest.mark.parametrize("binary", [False, True])
def test_empty_tensors_of_impossible_shapes(shape: list[int], binary: bool) -> None:
    tensor = {"name": "x", "shape": shape, "datatype": "FP32"}
    if binary:
        raw, length = binary_body({"inputs": [{**tensor, "parameters": {"binary_data_size": 0}}]})
    else:
        raw, length = body({**tensor, "data": []}), None
    with pytest.raises(InvalidRequest, match=r"input 'x': shape \[0, \d+.* is too large"):
        decode_request(raw, length)


def test_a_bytes_shape_larger_than_its_bytes_is_refused_before_allocating() -> None:
    header = {
        "inputs": [
            {
                "name": "s",
                "shape": [10**12, 10**12],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": 8},
            }
        ]
    }
    raw, length = binary_body(header, bytes_blob([b"abcd"]))
    with pytest.raises(
        InvalidRequest, match=r"input 's': 1000000000000000000000000 BYTES elements need at least"
    ):
        decode_request(raw, length)


def test_more_than_64_dimensions() -> None:
    with pytest.raises(InvalidRequest, match=r"inputs\[0\]\.shape: 65 dimensions, at most 64"):
        decode_request(body({**X, "shape": [1] * 65}), None)


def test_show_renders_json_and_cuts_long_values() -> None:
    assert show(None) == "null"
    assert show({"a": [True, 1.5, "é"]}) == '{"a":[true,1.5,"é"]}'
    assert show("FLOAT") == '"FLOAT"'
    long = show(list(range(10_000)))
    assert len(long) == 60 and long.startswith("[0,1,2,") and long.endswith("...")
    assert show(2**70) == repr(2**70)  # past orjson's 64-bit integers
