"""The ONNX Runtime engine on real model files, and its device placement.

What every engine must do is in the shared conformance suite (test_conformance.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from server.datatypes import BF16
from server.engines import LoadOptions, engine_class
from server.engines.onnxruntime import ONNXRuntimeEngine
from server.errors import ConfigError, InvalidRequest, ModelLoadError
from tests import onnx_models


def test_signature_is_read_from_the_file(tmp_path: Path) -> None:
    engine = ONNXRuntimeEngine(LoadOptions(path=onnx_models.add_sub(tmp_path / "m.onnx", width=3)))
    assert [(t.name, t.datatype, t.shape) for t in engine.inputs] == [
        ("A", "FP32", (-1, 3)),
        ("B", "FP32", (-1, 3)),
    ]
    assert [t.name for t in engine.outputs] == ["SUM", "DIFF"]
    out = engine.run(
        0, {"A": np.ones((2, 3), np.float32), "B": np.ones((2, 3), np.float32)}, ["DIFF"]
    )
    assert list(out) == ["DIFF"] and out["DIFF"].tolist() == [[0, 0, 0], [0, 0, 0]]
    engine.close()


def test_bf16_and_strings(tmp_path: Path) -> None:
    bf16 = ONNXRuntimeEngine(
        LoadOptions(path=onnx_models.identity(tmp_path / "b.onnx", "BF16", [2]))
    )
    x = np.array([1.5, -3.0], dtype=BF16)
    y = bf16.run(0, {"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"]
    assert y.dtype == BF16 and y.astype(np.float32).tolist() == [1.5, -3.0]
    strings = ONNXRuntimeEngine(
        LoadOptions(path=onnx_models.identity(tmp_path / "s.onnx", "BYTES", [2]))
    )
    out = strings.run(0, {"INPUT0": np.array([b"ab", "é".encode()], dtype=object)}, ["OUTPUT0"])
    assert out["OUTPUT0"].tolist() == [b"ab", "é".encode()]
    with pytest.raises(InvalidRequest, match="string tensors must be UTF-8"):
        strings.run(0, {"INPUT0": np.array([b"\xff", b""], dtype=object)}, ["OUTPUT0"])


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelLoadError, match=rf"onnxruntime cannot load {corrupt}: .*"):
        ONNXRuntimeEngine(LoadOptions(path=corrupt))
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_models.dense(tmp_path / "d.onnx", 64, 2).read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load"):
        ONNXRuntimeEngine(LoadOptions(path=truncated))
    with pytest.raises(ModelLoadError, match="missing model file"):
        ONNXRuntimeEngine(LoadOptions(path=tmp_path / "absent.onnx"))


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"threads": 2}, r"unknown onnxruntime parameter\(s\) \['threads'\]"),
        ({"intra_op_threads": "many"}, "thread parameters must be integers"),
        ({"optimization": "max"}, "parameter optimization = 'max'"),
    ],
)
def test_parameter_errors(tmp_path: Path, parameters: dict, message: str) -> None:
    path = onnx_models.dense(tmp_path / "d.onnx")
    with pytest.raises(ModelLoadError, match=message):
        ONNXRuntimeEngine(LoadOptions(path=path, parameters=parameters))


def test_resize_adds_and_drops_sessions(tmp_path: Path) -> None:
    engine = ONNXRuntimeEngine(
        LoadOptions(path=onnx_models.dense(tmp_path / "d.onnx"), instances=2)
    )
    x = np.ones((1, 16), np.float32)
    engine.resize(3)
    results = [engine.run(i, {"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"] for i in range(3)]
    np.testing.assert_array_equal(results[0], results[2])
    engine.resize(1)
    with pytest.raises(IndexError):
        engine.run(2, {"INPUT0": x}, ["OUTPUT0"])


def test_engine_table() -> None:
    assert engine_class("onnxruntime") is ONNXRuntimeEngine
    with pytest.raises(ConfigError, match=r"unknown engine 'tensorflow' \(known: onnxruntime"):
        engine_class("tensorflow")


# -- device placement ---------------------------------------------------------------------


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return onnx_models.add_sub(tmp_path / "add_sub.onnx")


def test_cpu_is_the_default_and_reported(model: Path) -> None:
    assert ONNXRuntimeEngine(LoadOptions(path=model)).device == "cpu"
    assert ONNXRuntimeEngine(LoadOptions(path=model, device="CPU")).device == "cpu"


def test_tensorrt_needs_a_cuda_device(model: Path) -> None:
    with pytest.raises(ModelLoadError, match=r'parameter tensorrt = true needs device = "cuda"'):
        ONNXRuntimeEngine(LoadOptions(path=model, parameters={"tensorrt": True}))
    with pytest.raises(ModelLoadError, match=r"parameter tensorrt = 'yes': use true or false"):
        ONNXRuntimeEngine(LoadOptions(path=model, parameters={"tensorrt": "yes"}))


def test_tensorrt_without_its_provider_names_what_is_missing(model: Path) -> None:
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has TensorRT")
    with pytest.raises(
        ModelLoadError,
        match=r"device 'cuda:1' is not available: onnxruntime .* has no TensorrtExecutionProvider",
    ):
        ONNXRuntimeEngine(LoadOptions(path=model, device="cuda:1", parameters={"tensorrt": True}))


def test_openvino_device_names_are_refused(model: Path) -> None:
    with pytest.raises(
        ModelLoadError,
        match=r"device 'GPU.1' is an OpenVINO device name; the onnxruntime engine runs on cpu, cuda, cuda:N or auto",
    ):
        ONNXRuntimeEngine(LoadOptions(path=model, device="GPU.1"))
