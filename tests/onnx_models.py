"""Small real ONNX models for tests, and a helper to write model folders."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "repository"

ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BF16": TensorProto.BFLOAT16,
    "BYTES": TensorProto.STRING,
}


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def identity(path: Path, datatype: str, shape: list[int | str | None]) -> Path:
    """OUTPUT0 = INPUT0 for one datatype."""
    t = ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [helper.make_tensor_value_info("INPUT0", t, shape)],
        [helper.make_tensor_value_info("OUTPUT0", t, shape)],
    )
    return _save(graph, path)


def add_sub(path: Path, width: int = 4) -> Path:
    """SUM = A + B and DIFF = A - B, FP32 [batch, width]."""
    io = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", width])  # noqa: E731
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["A", "B"], ["SUM"]),
            helper.make_node("Sub", ["A", "B"], ["DIFF"]),
        ],
        "add_sub",
        [io("A"), io("B")],
        [io("SUM"), io("DIFF")],
    )
    return _save(graph, path)


def dense(path: Path, width: int = 16, layers: int = 1, seed: int = 0) -> Path:
    """The peers' benchmark shape: `layers` x (Gemm width x width + Relu), INPUT0 -> OUTPUT0."""
    rng = np.random.default_rng(seed)
    nodes, weights, prev = [], [], "INPUT0"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        weights += [
            numpy_helper.from_array(w, f"W{i}"),
            numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), f"B{i}"),
        ]
        out = "OUTPUT0" if i == layers - 1 else f"h{i}"
        nodes += [
            helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [f"g{i}"]),
            helper.make_node("Relu", [f"g{i}"], [out]),
        ]
        prev = out
    io = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", width])  # noqa: E731
    graph = helper.make_graph(nodes, "dense", [io("INPUT0")], [io("OUTPUT0")], weights)
    return _save(graph, path)


def slow(path: Path, width: int = 256, layers: int = 64) -> Path:
    """A compute-heavy model with a small file: `layers` x (MatMul by one shared width x width
    weight + Relu), INPUT0 -> OUTPUT0 FP32 [batch, width]. Time per row grows with layers."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes, prev = [], "INPUT0"
    for i in range(layers):
        out = "OUTPUT0" if i == layers - 1 else f"h{i}"
        nodes += [
            helper.make_node("MatMul", [prev, "W"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [out]),
        ]
        prev = out
    io = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", width])  # noqa: E731
    graph = helper.make_graph(
        nodes, "slow", [io("INPUT0")], [io("OUTPUT0")], [numpy_helper.from_array(w, "W")]
    )
    return _save(graph, path)


def model_folder(root: Path, name: str, toml: str, files: dict[int, Path] | None = None) -> Path:
    """Write root/name/model.toml and copy each version's model file into root/name/<v>/."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.toml").write_text(toml)
    for version, source in (files or {}).items():
        (folder / str(version)).mkdir(exist_ok=True)
        shutil.copy(source, folder / str(version) / source.name)
    return folder


def dense_folder(root: Path, name: str, toml: str, seed: int = 0) -> Path:
    """root/name with `toml` and version 1 = dense(seed=seed) (INPUT0 -> OUTPUT0, [batch, 16])."""
    built = dense(root.parent / "built" / f"{name}-{seed}" / "model.onnx", seed=seed)
    return model_folder(root, name, toml, {1: built})


def copy_samples(root: Path) -> None:
    """The shipped sample models, copied into a test repository."""
    for sample in ("digits", "iris"):
        shutil.copytree(SAMPLES / sample, root / sample)


def identity_models(root: Path, datatypes: Iterable[str]) -> None:
    """root/identity_<datatype> per datatype: output = input, [batch, 3], max_batch_size 8."""
    for datatype in datatypes:
        name = f"identity_{datatype.lower()}"
        identity(root / name / "1" / "model.onnx", datatype, ["batch", 3])
        (root / name / "model.toml").write_text('engine = "onnxruntime"\nmax_batch_size = 8\n')
