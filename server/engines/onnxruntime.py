"""ONNX Runtime engine: one InferenceSession per instance, CPU threads split between them.

Parameters (model.toml ``[parameters]``):
    intra_op_threads   threads per session (default: cores / instances)
    inter_op_threads   default 1
    allow_spinning     let idle intra-op threads spin (default false: on a small machine a
                       spinning pool steals the CPU the HTTP event loop needs)
    optimization       "disable" | "basic" | "extended" | "all" (default "all")
    tensorrt           true: on a CUDA device, try TensorrtExecutionProvider before CUDA's

Devices: "cuda" / "cuda:N" use CUDAExecutionProvider, which only the onnxruntime-gpu build
has (``pip install 'cinfer[gpu]'``). ONNX Runtime falls back to CPU silently when the provider
cannot start (no GPU, driver or CUDA libraries); here that is a load error for "cuda" and a
logged fall-back for "auto". session.run copies the inputs to the GPU once per call (one
call per batch) and the outputs back once.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from ..datatypes import BF16
from ..errors import EngineError, InvalidRequest, ModelLoadError
from ..model_config import TensorSpec
from . import LoadOptions, nvidia_device

log = logging.getLogger("cinfer")

#: ONNX Runtime type strings -> KServe datatypes.
ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}
ONNX_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16

OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
KNOWN_PARAMETERS = {
    "intra_op_threads",
    "inter_op_threads",
    "allow_spinning",
    "optimization",
    "tensorrt",
}
CPU = ["CPUExecutionProvider"]
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"


class ONNXRuntimeEngine:
    """Runs an .onnx file with ONNX Runtime's CPU execution provider."""

    default_file = "model.onnx"

    def __init__(self, options: LoadOptions) -> None:
        self._options = options
        self._session_options = _session_options(options)
        self._providers, self.device = _placement(options)
        # With 2+ intra-op threads onnxruntime has a pool of its own; with one, the calling
        # thread does all the compute and must not be confined to the event loop's core.
        self.own_threads = self.device != "cpu" or self._session_options.intra_op_num_threads > 1
        self._lock = threading.Lock()
        self._sessions: list[ort.InferenceSession] = []
        self._sessions.append(self._new_session())
        first = self._sessions[0]
        if self.device != "cpu":
            first = self._check_gpu(first)
        self.inputs = [_spec(arg) for arg in first.get_inputs()]
        self.outputs = [_spec(arg) for arg in first.get_outputs()]
        self._bf16 = any(t.datatype == "BF16" for t in (*self.inputs, *self.outputs))
        self._strings = {t.name for t in self.inputs if t.datatype == "BYTES"}
        self._string_outputs = {t.name for t in self.outputs if t.datatype == "BYTES"}
        self.resize(options.instances)

    def _new_session(self) -> ort.InferenceSession:
        path = self._options.path
        if not path.is_file():
            raise ModelLoadError(f"missing model file {path}")
        try:
            return ort.InferenceSession(str(path), self._session_options, providers=self._providers)
        except Exception as exc:  # onnxruntime raises its own untyped pybind errors
            raise ModelLoadError(f"onnxruntime cannot load {path}: {_short(exc)}") from exc

    def _check_gpu(self, session: ort.InferenceSession) -> ort.InferenceSession:
        """ONNX Runtime drops a provider that fails to start and runs on CPU without saying
        so; a model that asked for a GPU must not end up there unnoticed."""
        wanted = [p if isinstance(p, str) else p[0] for p in self._providers[:-1]]
        started = session.get_providers()
        missing = [p for p in wanted if p not in started]
        if not missing:
            return session
        why = (
            f"onnxruntime could not start {' and '.join(missing)} on {self.device} (no NVIDIA "
            "GPU, driver or CUDA/TensorRT libraries; the server log has onnxruntime's message)"
        )
        if self._options.device != "auto":
            raise ModelLoadError(f"device {self._options.device!r} is not available: {why}")
        log.warning('%s: device = "auto": %s; running on CPU', self._options.path, why)
        self._providers, self.device = CPU, "cpu"
        self._sessions[0] = self._new_session()
        return self._sessions[0]

    def resize(self, instances: int) -> None:
        with self._lock:
            while len(self._sessions) < instances:
                self._sessions.append(self._new_session())
            del self._sessions[instances:]

    def run(
        self, instance: int, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        session = self._sessions[instance]
        feed = inputs
        if self._strings:
            feed = {n: _to_str(n, a) if n in self._strings else a for n, a in inputs.items()}
        try:
            if self._bf16:
                return _run_bf16(session, feed, outputs)
            # The binding's run skips InferenceSession.run's Python-side re-validation of the
            # input names (done by the server already): ~2 us per call on the hot path.
            results = session._sess.run(outputs, feed, None)
        except ort_state.InvalidArgument as exc:
            raise InvalidRequest(f"onnxruntime rejected the inputs: {_short(exc)}") from exc
        except Exception as exc:
            raise EngineError(f"onnxruntime failed: {_short(exc)}") from exc
        out = dict(zip(outputs, results))
        if self._string_outputs:
            for name in self._string_outputs.intersection(out):
                value = out[name]
                out[name] = np.array([s.encode() for s in value.ravel()], dtype=object).reshape(
                    value.shape
                )
        return out

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()


def _session_options(options: LoadOptions) -> ort.SessionOptions:
    params = dict(options.parameters)
    unknown = sorted(set(params) - KNOWN_PARAMETERS)
    if unknown:
        raise ModelLoadError(
            f"unknown onnxruntime parameter(s) {unknown} (known: {sorted(KNOWN_PARAMETERS)})"
        )
    so = ort.SessionOptions()
    try:
        so.intra_op_num_threads = int(params.get("intra_op_threads", options.threads))
        so.inter_op_num_threads = int(params.get("inter_op_threads", 1))
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"onnxruntime thread parameters must be integers: {exc}") from exc
    level = str(params.get("optimization", "all"))
    if level not in OPTIMIZATION:
        raise ModelLoadError(
            f"parameter optimization = {level!r}: use one of {sorted(OPTIMIZATION)}"
        )
    so.graph_optimization_level = OPTIMIZATION[level]
    spinning = params.get("allow_spinning", False)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3
    return so


def _placement(options: LoadOptions) -> tuple[list[Any], str]:
    """(providers, resolved device) for model.toml's device and the tensorrt parameter."""
    kind, index = nvidia_device("onnxruntime", options.device)
    tensorrt = options.parameters.get("tensorrt", False)
    if not isinstance(tensorrt, bool):
        raise ModelLoadError(f"parameter tensorrt = {tensorrt!r}: use true or false")
    if kind == "cpu":
        if tensorrt:
            raise ModelLoadError('parameter tensorrt = true needs device = "cuda" (or "cuda:N")')
        return CPU, "cpu"
    wanted = [TENSORRT_PROVIDER, CUDA_PROVIDER] if tensorrt else [CUDA_PROVIDER]
    available = ort.get_available_providers()
    missing = [p for p in wanted if p not in available]
    if missing:
        why = (
            f"onnxruntime {ort.__version__} has no {' or '.join(missing)} "
            f"(it has {', '.join(available)})"
        )
        if kind == "auto" and CUDA_PROVIDER in available:
            log.info('%s: device = "auto": %s; running on CUDA alone', options.path, why)
            wanted = [CUDA_PROVIDER]
        elif kind == "auto":
            log.info('%s: device = "auto": %s; running on CPU', options.path, why)
            return CPU, "cpu"
        else:
            raise ModelLoadError(
                f"device {options.device!r} is not available: {why}; the GPU providers come "
                "with the onnxruntime-gpu build (pip install 'cinfer[gpu]') and need an NVIDIA GPU"
            )
    providers: list[Any] = [(p, {"device_id": index}) for p in wanted]
    return [*providers, *CPU], f"cuda:{index}"


def _spec(arg: Any) -> TensorSpec:
    datatype = ORT_TYPES.get(arg.type)
    if datatype is None:
        raise ModelLoadError(
            f"tensor '{arg.name}' has type {arg.type}, which has no KServe datatype"
        )
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape or ()))
    return TensorSpec.model_validate({"name": arg.name, "datatype": datatype, "shape": shape})


def _to_str(name: str, array: np.ndarray) -> np.ndarray:
    """ONNX Runtime string tensors take Python str; BYTES elements arrive as bytes."""
    try:
        flat = [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel()]
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"input '{name}': string tensors must be UTF-8 ({exc})") from exc
    return np.array(flat, dtype=object).reshape(array.shape)


def _run_bf16(
    session: ort.InferenceSession, feed: Mapping[str, np.ndarray], outputs: Sequence[str]
) -> dict[str, np.ndarray]:
    """numpy cannot hand bfloat16 to ONNX Runtime; go through OrtValues and raw buffers."""
    values = {}
    for name, array in feed.items():
        if array.dtype == BF16:
            values[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                np.ascontiguousarray(array).view(np.uint16), ONNX_BFLOAT16
            )
        else:
            values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
    results = session.run_with_ort_values(list(outputs), values)
    out = {}
    for name, value in zip(outputs, results):
        if value.data_type() == "tensor(bfloat16)":
            shape = tuple(value.shape())
            count = int(np.prod(shape, dtype=np.int64))
            raw = np.zeros(count, dtype=np.uint16)
            if count:
                ctypes.memmove(raw.ctypes.data, value.data_ptr(), count * 2)
            out[name] = raw.view(BF16).reshape(shape)
        else:
            out[name] = value.numpy()
    return out


def _short(exc: BaseException) -> str:
    """ONNX Runtime messages start with '[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : '."""
    text = str(exc).strip()
    if text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ", 3)[-1]
    return text.splitlines()[0][:500] if text else type(exc).__name__
