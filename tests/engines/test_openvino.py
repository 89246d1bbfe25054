"""The OpenVINO engine beyond the shared suite: infer requests, properties, ONNX files,
strings, devices."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
from onnx import TensorProto, helper

from server.engines import LoadOptions
from server.engines.openvino import OpenVINOEngine
from server.errors import ModelLoadError
from tests import engine_models, onnx_models
from tests.engine_models import OPENVINO


@pytest.fixture
def dense_ir(tmp_path: Path) -> tuple[Path, Path]:
    """(IR, the ONNX file it came from): 4 layers of 256, the peers' mlp in small."""
    onnx_file = onnx_models.dense(tmp_path / "dense.onnx", width=256, layers=4)
    xml = tmp_path / "ir" / "model.xml"
    xml.parent.mkdir()
    ov.save_model(ov.convert_model(onnx_file), xml, compress_to_fp16=False)
    return xml, onnx_file


def test_instances_are_infer_requests_on_one_compiled_model(dense_ir: tuple[Path, Path]) -> None:
    xml, onnx_file = dense_ir
    engine = OpenVINOEngine(LoadOptions(path=xml, instances=3))
    reference = ort.InferenceSession(str(onnx_file))
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((4, 256)).astype(np.float32) for _ in range(3)]
    results: dict[int, np.ndarray] = {}

    def run(instance: int) -> None:
        for _ in range(20):
            results[instance] = engine.run(instance, {"INPUT0": xs[instance]}, ["OUTPUT0"])[
                "OUTPUT0"
            ]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, x in enumerate(xs):
        expected = reference.run(None, {"INPUT0": x})[0]
        np.testing.assert_allclose(results[i], expected, rtol=1e-5, atol=1e-6)
    engine.resize(1)
    with pytest.raises(IndexError):
        engine.run(2, {"INPUT0": xs[0]}, ["OUTPUT0"])
    engine.resize(2)
    np.testing.assert_array_equal(
        engine.run(1, {"INPUT0": xs[0]}, ["OUTPUT0"])["OUTPUT0"], results[0]
    )
    engine.close()


def test_f32_by_default_so_answers_match_onnxruntime(dense_ir: tuple[Path, Path]) -> None:
    """OpenVINO would compile to bf16 on CPUs with avx512_bf16 and move these by ~1e-3."""
    xml, onnx_file = dense_ir
    engine = OpenVINOEngine(LoadOptions(path=xml))
    assert engine._compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    x = np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32)
    expected = ort.InferenceSession(str(onnx_file)).run(None, {"INPUT0": x})[0]
    got = engine.run(0, {"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_parameters_reach_the_compiled_model(dense_ir: tuple[Path, Path]) -> None:
    xml, _ = dense_ir
    parameters = {
        "PERFORMANCE_HINT": "THROUGHPUT",
        "NUM_STREAMS": 2,
        "INFERENCE_NUM_THREADS": 2,
        "INFERENCE_PRECISION_HINT": "bf16",
    }
    engine = OpenVINOEngine(LoadOptions(path=xml, instances=2, parameters=parameters))
    compiled = engine._compiled
    assert str(compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
    assert compiled.get_property("NUM_STREAMS") == 2
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 2
    supported = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in supported:
        assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16


def test_a_bad_parameter_value_names_openvinos_complaint(dense_ir: tuple[Path, Path]) -> None:
    xml, _ = dense_ir
    with pytest.raises(ModelLoadError, match=r"Could not read number of streams from str: lots"):
        OpenVINOEngine(LoadOptions(path=xml, parameters={"NUM_STREAMS": "lots"}))


def test_reads_onnx_files_with_the_same_answer(dense_ir: tuple[Path, Path]) -> None:
    xml, onnx_file = dense_ir
    from_onnx = OpenVINOEngine(LoadOptions(path=onnx_file))
    from_ir = OpenVINOEngine(LoadOptions(path=xml))
    assert from_onnx.inputs == from_ir.inputs
    assert from_onnx.outputs == from_ir.outputs
    x = np.random.default_rng(2).standard_normal((3, 256)).astype(np.float32)
    np.testing.assert_allclose(
        from_onnx.run(0, {"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"],
        from_ir.run(0, {"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"],
        rtol=1e-6,
    )


def _string_concat(path: Path) -> Path:
    """OUTPUT0 = concat(INPUT0, INPUT0) along the last axis, BYTES [batch, 2] -> [batch, 4]."""
    graph = helper.make_graph(
        [helper.make_node("Concat", ["INPUT0", "INPUT0"], ["OUTPUT0"], axis=1)],
        "strings",
        [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["batch", 2])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_string_tensors_in_and_out(tmp_path: Path) -> None:
    engine = OpenVINOEngine(LoadOptions(path=_string_concat(tmp_path / "strings.onnx")))
    assert engine.inputs[0].datatype == "BYTES" and engine.outputs[0].datatype == "BYTES"
    x = np.array([[b"plain", "h\u00e9llo".encode()], [b"", b"nul\x00inside"]], dtype=object)
    out = engine.run(0, {"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"]
    assert out.dtype == object
    assert out.tolist() == [[*row, *row] for row in x.tolist()]


def test_a_string_identity_is_refused_instead_of_crashing_the_process(tmp_path: Path) -> None:
    """OpenVINO's CPU Identity on strings double-frees when the model is released."""
    xml = engine_models.identity(OPENVINO, tmp_path, "BYTES", [-1, 3])
    with pytest.raises(ModelLoadError, match=r"corrupts memory when it passes a string tensor"):
        OpenVINOEngine(LoadOptions(path=xml))


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("GPU", r"device 'GPU' is not available to OpenVINO .* \(it sees: CPU"),
        ("cuda:1", r"device 'cuda:1' is not available to OpenVINO, which runs on Intel"),
    ],
)
def test_devices_that_are_not_there(dense_ir: tuple[Path, Path], device: str, message: str) -> None:
    if any(d.startswith("GPU") for d in ov.Core().available_devices):
        pytest.skip("this machine has an OpenVINO GPU")
    with pytest.raises(ModelLoadError, match=message):
        OpenVINOEngine(LoadOptions(path=dense_ir[0], device=device))


def test_cpu_by_any_spelling(dense_ir: tuple[Path, Path]) -> None:
    for device in ("cpu", "CPU"):
        assert OpenVINOEngine(LoadOptions(path=dense_ir[0], device=device)).device == "CPU"
