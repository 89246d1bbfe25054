"""The same small models in every engine's format, and model folders that serve them.

Each model is written as ONNX (tests/onnx_models.py), converted to OpenVINO IR with
openvino.convert_model / save_model, and written in torch as a TorchScript module and a
torch.export program with the same arithmetic. torch and openvino are imported here, so only
the engine tests import this module.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import openvino as ov
import torch

from server.datatypes import NUMPY
from tests import onnx_models


@dataclass(frozen=True)
class Format:
    """One way of serving a model: the engine and the file it reads."""

    id: str
    engine: str
    file: str

    @property
    def needs_declaration(self) -> bool:
        return self.engine == "torch"


ONNXRUNTIME = Format("onnxruntime", "onnxruntime", "model.onnx")
OPENVINO = Format("openvino", "openvino", "model.xml")
TORCHSCRIPT = Format("torchscript", "torch", "model.pt")
TORCH_EXPORT = Format("torch.export", "torch", "model.pt2")
FORMATS = [ONNXRUNTIME, OPENVINO, TORCHSCRIPT, TORCH_EXPORT]

TORCH_DTYPES = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "BF16": torch.bfloat16,
}


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class AddSub(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, a - b


def _torchscript(module: torch.nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript, deprecated in 2.13
        torch.jit.script(module).save(str(path))
    return path


def _exported(
    module: torch.nn.Module, examples: tuple[torch.Tensor, ...], dynamic: list[int], path: Path
) -> Path:
    """torch.export with the listed dims of every input dynamic (shared across inputs)."""
    dims = {i: torch.export.Dim(f"d{i}") for i in dynamic}
    names = ["x"] if len(examples) == 1 else ["a", "b"]
    shapes = {name: dims for name in names} if dims else None
    program = torch.export.export(module, examples, dynamic_shapes=shapes)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


#: ONNX file contents -> (IR .xml, .bin): convert_model takes ~0.2 s, tests reuse models.
_converted: dict[bytes, tuple[bytes, bytes]] = {}


def _openvino(onnx_file: Path, path: Path) -> Path:
    """OpenVINO IR converted from an ONNX file, float32 weights kept as they are."""
    key = onnx_file.read_bytes()
    if key not in _converted:
        with tempfile.TemporaryDirectory() as tmp:
            xml = Path(tmp) / "model.xml"
            ov.save_model(ov.convert_model(onnx_file), xml, compress_to_fp16=False)
            _converted[key] = xml.read_bytes(), xml.with_suffix(".bin").read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    xml_bytes, bin_bytes = _converted[key]
    path.write_bytes(xml_bytes)
    path.with_suffix(".bin").write_bytes(bin_bytes)
    return path


def _example(datatype: str, shape: list[int]) -> torch.Tensor:
    concrete = [3 if d == -1 else d for d in shape]  # 0 and 1 would be specialised by export
    return torch.zeros(concrete, dtype=TORCH_DTYPES[datatype])


def identity(fmt: Format, folder: Path, datatype: str, shape: list[int]) -> Path:
    """OUTPUT0 = INPUT0 (torch: x) of one datatype; -1 dims are dynamic."""
    path = folder / fmt.file
    if fmt is TORCHSCRIPT:
        return _torchscript(Identity(), path)
    if fmt is TORCH_EXPORT:
        dynamic = [i for i, d in enumerate(shape) if d == -1]
        return _exported(Identity(), (_example(datatype, shape),), dynamic, path)
    dims: list[int | str | None] = [f"d{i}" if d == -1 else d for i, d in enumerate(shape)]
    if fmt is ONNXRUNTIME:
        return onnx_models.identity(path, datatype, dims)
    with tempfile.TemporaryDirectory() as tmp:
        return _openvino(onnx_models.identity(Path(tmp) / "m.onnx", datatype, dims), path)


def add_sub(fmt: Format, folder: Path, width: int = 4) -> Path:
    """SUM = A + B, DIFF = A - B, FP32 [batch, width] (torch: forward(a, b) -> (sum, diff))."""
    path = folder / fmt.file
    if fmt is TORCHSCRIPT:
        return _torchscript(AddSub(), path)
    if fmt is TORCH_EXPORT:
        # Two distinct tensors: export would take one tensor passed twice for one input.
        examples = (torch.zeros(3, width), torch.zeros(3, width))
        return _exported(AddSub(), examples, [0], path)
    if fmt is ONNXRUNTIME:
        return onnx_models.add_sub(path, width)
    with tempfile.TemporaryDirectory() as tmp:
        return _openvino(onnx_models.add_sub(Path(tmp) / "m.onnx", width), path)


def toml(
    fmt: Format,
    inputs: list[tuple[str, str, list[int]]] | None = None,
    outputs: list[tuple[str, str, list[int]]] | None = None,
    **settings: object,
) -> str:
    """model.toml for `fmt` with the given declarations and top-level settings."""
    lines = [f'engine = "{fmt.engine}"', f'file = "{fmt.file}"']
    tables: dict[str, dict[str, object]] = {
        k: v for k, v in settings.items() if isinstance(v, dict)
    }
    for key, value in settings.items():
        if key not in tables:
            lines.append(f"{key} = {_value(value)}")
    for kind, specs in (("inputs", inputs), ("outputs", outputs)):
        for name, datatype, shape in specs or ():
            lines += ["", f"[[{kind}]]", f'name = "{name}"', f'datatype = "{datatype}"']
            lines.append(f"shape = {shape}")
    for table, values in tables.items():
        lines += ["", f"[{table}]"]
        lines += [f"{k} = {_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def extremes(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Values that show a lossy conversion: the type's limits, a fraction, a negative zero."""
    dtype = NUMPY[datatype]
    count = int(np.prod(shape))
    if datatype == "BOOL":
        values = np.array([True, False])
    elif datatype == "BYTES":
        values = np.array([b"", b"ascii", "h\u00e9llo".encode(), b"nul\x00inside"], dtype=object)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.array([info.min, info.max, 1, 0], dtype=dtype)
    else:
        finfo = ml_dtypes.finfo(dtype)
        values = np.array([finfo.max, -finfo.tiny, 1 / 3, -0.0]).astype(dtype)
    return np.resize(values, count).reshape(shape)
