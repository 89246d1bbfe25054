"""OpenVINO engine: one compiled model per version, one infer request per instance.

Reads OpenVINO IR (``model.xml`` + ``model.bin``) and, through OpenVINO's own reader, ``.onnx``
files (``file = "model.onnx"``). The instances are infer requests on the one compiled model,
so they share its weights instead of loading the model once each.

Parameters (model.toml ``[parameters]``, OpenVINO's own property names):
    PERFORMANCE_HINT          LATENCY | THROUGHPUT (default: LATENCY with one instance,
                              THROUGHPUT sized for `instances` requests otherwise)
    NUM_STREAMS               executions that run at the same time (overrides the hint's)
    INFERENCE_NUM_THREADS     CPU threads for all streams together (default: the CPUs this
                              process may run on)
    INFERENCE_PRECISION_HINT  f32 by default here. OpenVINO itself picks bf16 on CPUs with
                              avx512_bf16 (and f16 on GPUs), which changes the answers (the mlp
                              test model moves by up to 3e-3); bf16 is faster: opt in with
                              INFERENCE_PRECISION_HINT = "bf16" (docs/engines.md).

Devices: "cpu" is OpenVINO's CPU; "auto" is the first GPU OpenVINO sees, else CPU; an OpenVINO
device name ("GPU", "GPU.1", "NPU", "AUTO:GPU,CPU") is passed as given. OpenVINO does not run
on NVIDIA GPUs, so "cuda" is refused with the devices it has.

OpenVINO's CPU plugin runs INT64 as 32-bit integers: int64 values outside the int32 range do
not survive it (docs/engines.md).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from ..datatypes import BF16
from ..errors import EngineError, ModelLoadError
from ..model_config import TensorSpec
from . import CUDA, LoadOptions, cpu_count

log = logging.getLogger("cinfer")

#: OpenVINO element type names -> KServe datatypes.
OV_TYPES = {
    "boolean": "BOOL",
    "u8": "UINT8",
    "u16": "UINT16",
    "u32": "UINT32",
    "u64": "UINT64",
    "i8": "INT8",
    "i16": "INT16",
    "i32": "INT32",
    "i64": "INT64",
    "f16": "FP16",
    "f32": "FP32",
    "f64": "FP64",
    "bf16": "BF16",
    "string": "BYTES",
}
KNOWN_PARAMETERS = {
    "PERFORMANCE_HINT",
    "NUM_STREAMS",
    "INFERENCE_NUM_THREADS",
    "INFERENCE_PRECISION_HINT",
}
#: OpenVINO's virtual devices, which pick or combine real ones themselves.
VIRTUAL_DEVICES = {"AUTO", "MULTI", "HETERO", "BATCH"}


class OpenVINOEngine:
    """Runs OpenVINO IR or ONNX with OpenVINO; instances are infer requests."""

    default_file = "model.xml"

    def __init__(self, options: LoadOptions) -> None:
        path = options.path
        _check_files(path)
        core = _core()
        self.device = _device(core, options.device, path)
        self.own_threads = True  # infer requests run on OpenVINO's own stream threads
        config = _compile_config(options, self.device)
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises bare RuntimeErrors
            raise ModelLoadError(f"OpenVINO cannot read {path}: {_short(exc)}") from exc
        self.inputs = [_spec(port, "input", i) for i, port in enumerate(model.inputs)]
        self.outputs = [_spec(port, "output", i) for i, port in enumerate(model.outputs)]
        try:
            self._compiled = core.compile_model(model, self.device, config)
        except Exception as exc:
            raise ModelLoadError(
                f"OpenVINO cannot compile {path} for {self.device} with {config}: {_short(exc)}"
            ) from exc
        if self.device.startswith("CPU"):
            _refuse_string_identity(self._compiled, path)
        self._input_names = [t.name for t in self.inputs]
        self._output_index = {t.name: i for i, t in enumerate(self.outputs)}
        self._convert = {t.name: t.datatype for t in self.inputs if t.datatype in ("BF16", "BYTES")}
        self._bf16_out = {t.name for t in self.outputs if t.datatype == "BF16"}
        self._string_out = {t.name for t in self.outputs if t.datatype == "BYTES"}
        self._lock = threading.Lock()
        self._requests: list[ov.InferRequest] = []
        self.resize(options.instances)

    def resize(self, instances: int) -> None:
        with self._lock:
            while len(self._requests) < instances:
                self._requests.append(self._compiled.create_infer_request())
            del self._requests[instances:]

    def run(
        self, instance: int, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        request = self._requests[instance]
        if self._convert:
            feed: list[Any] = [self._tensor(name, inputs[name]) for name in self._input_names]
        else:
            feed = [inputs[name] for name in self._input_names]
        try:
            # share_inputs: OpenVINO reads the request's arrays in place; share_outputs=False:
            # the results are copies, so the request can run again before they are sent.
            values = request.infer(feed, share_inputs=True, share_outputs=False).to_tuple()
        except Exception as exc:
            raise EngineError(f"OpenVINO failed: {_short(exc)}") from exc
        index = self._output_index
        result = {name: values[index[name]] for name in outputs}
        for name in self._bf16_out.intersection(result):
            # OpenVINO hands bf16 out as float16-typed memory; the bits are bfloat16.
            result[name] = result[name].view(BF16)
        for name in self._string_out.intersection(result):
            raw = request.get_output_tensor(index[name]).bytes_data
            result[name] = np.array(raw.ravel().tolist(), dtype=object).reshape(raw.shape)
        return result

    def _tensor(self, name: str, array: np.ndarray) -> Any:
        datatype = self._convert.get(name)
        if datatype == "BF16":
            # numpy's bfloat16 (ml_dtypes) is unknown to OpenVINO: hand it the bits.
            bits = np.ascontiguousarray(array).view(np.uint16)
            return ov.Tensor(bits, array.shape, ov.Type.bf16)
        if datatype == "BYTES":
            tensor = ov.Tensor(ov.Type.string, ov.Shape(list(array.shape)))
            tensor.bytes_data = array.ravel().tolist()
            return tensor
        return array

    def close(self) -> None:
        with self._lock:
            self._requests.clear()


@functools.cache
def _core() -> ov.Core:
    """One OpenVINO Core per process, as OpenVINO recommends (it is thread-safe); a new one
    per model would load the device plugins again (~0.15 s a model)."""
    return ov.Core()


def _check_files(path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"missing model file {path}")
    if path.suffix == ".xml":
        weights = path.with_suffix(".bin")
        if not weights.is_file():
            raise ModelLoadError(
                f"missing weights file {weights}: OpenVINO IR is {path.name} with "
                f"{weights.name} beside it"
            )


def _device(core: ov.Core, device: str, path: Path) -> str:
    """The OpenVINO device name for model.toml's device, or why it cannot be used."""
    available: list[str] = [str(d) for d in core.available_devices]
    if device.lower() == "cpu":
        return "CPU"
    if device == "auto":
        gpus = [d for d in available if d.startswith("GPU")]
        if gpus:
            return gpus[0]
        log.info(
            '%s: device = "auto": OpenVINO sees no GPU (devices: %s); running on CPU',
            path,
            ", ".join(available),
        )
        return "CPU"
    if CUDA.match(device):
        raise ModelLoadError(
            f"device {device!r} is not available to OpenVINO, which runs on Intel CPUs, GPUs "
            f"and NPUs, not CUDA (OpenVINO {ov.__version__} sees: {', '.join(available)}); "
            "serve the model with the onnxruntime or torch engine for an NVIDIA GPU"
        )
    if device.split(":")[0] in VIRTUAL_DEVICES:
        return device  # compile_model checks what it names
    if device in available or any(d.startswith(f"{device}.") for d in available):
        return device
    raise ModelLoadError(
        f"device {device!r} is not available to OpenVINO {ov.__version__} "
        f"(it sees: {', '.join(available)})"
    )


def _compile_config(options: LoadOptions, device: str) -> dict[str, str]:
    params = dict(options.parameters)
    unknown = sorted(set(params) - KNOWN_PARAMETERS)
    if unknown:
        raise ModelLoadError(
            f"unknown openvino parameter(s) {unknown} (known: {sorted(KNOWN_PARAMETERS)})"
        )
    config = {key: str(value) for key, value in params.items()}
    # Same answers as the other engines unless the model asks otherwise (see module docstring).
    config.setdefault("INFERENCE_PRECISION_HINT", "f32")
    if "PERFORMANCE_HINT" not in config and "NUM_STREAMS" not in config:
        if options.instances == 1:
            config["PERFORMANCE_HINT"] = "LATENCY"
        else:
            config["PERFORMANCE_HINT"] = "THROUGHPUT"
            config["PERFORMANCE_HINT_NUM_REQUESTS"] = str(options.instances)
    if device.startswith("CPU"):
        config.setdefault("INFERENCE_NUM_THREADS", str(cpu_count()))
    return config


def _spec(port: Any, kind: str, position: int) -> TensorSpec:
    names = port.get_names()
    if not names:
        raise ModelLoadError(f"model {kind} #{position} has no name; name it in the model file")
    name = port.get_any_name()
    type_name = port.get_element_type().get_type_name()
    datatype = OV_TYPES.get(type_name)
    if datatype is None:
        raise ModelLoadError(
            f"tensor '{name}' has OpenVINO type {type_name}, which has no KServe datatype"
        )
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        raise ModelLoadError(
            f"{kind} '{name}' has a dynamic rank, which KServe metadata cannot describe; "
            "give it a fixed rank in the model (ov.Model.reshape) before serving it"
        )
    dims = tuple(d.get_length() if d.is_static else -1 for d in shape)
    return TensorSpec.model_validate({"name": name, "datatype": datatype, "shape": dims})


def _refuse_string_identity(compiled: ov.CompiledModel, path: Path) -> None:
    """OpenVINO's CPU Identity copies string tensors shallowly (seen in 2026.4): the process
    aborts with a double free when the model is unloaded. Refuse such a model at load."""
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info or info["layerType"].astype(str) != "Identity":
            continue
        types = [op.get_output_element_type(i) for i in range(op.get_output_size())]
        if ov.Type.string in types:
            raise ModelLoadError(
                f"{path}: OpenVINO's CPU plugin corrupts memory when it passes a string tensor "
                f"through Identity ('{op.get_friendly_name()}'); remove the Identity from the "
                "model or serve it with the onnxruntime engine"
            )


def _short(exc: BaseException) -> str:
    """OpenVINO messages carry source locations and a trailing stack; keep the first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if not line.startswith(("Exception from", "Check '")):
            return line[:500]
    return lines[0][:500] if lines else type(exc).__name__
