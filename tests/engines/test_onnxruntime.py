"""The ONNX Runtime engine's device placement (the rest is in the shared suite)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from server.engines import LoadOptions
from server.engines.onnxruntime import ONNXRuntimeEngine
from server.errors import ModelLoadError
from tests import onnx_models


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
