"""PyTorch engine: TorchScript (``model.pt``, torch.jit.load) or torch.export (``model.pt2``).

A TorchScript file carries no tensor names or datatypes, so model.toml must declare
``[[inputs]]`` and ``[[outputs]]``: the inputs, in order, are the positional arguments of
``forward``; the outputs map from what it returns: one tensor (one output declared), a tuple
or list (one declared output per element, in order) or a dict (by key). The declared output
datatypes are checked against every result. A torch.export program does carry datatypes and
shapes: they are checked against the declaration like an ONNX file's.

One module serves every instance (the weights are loaded once); instances are threads calling
it concurrently, which torch allows for inference. Each call runs under
``torch.inference_mode()``.

Parameters (model.toml ``[parameters]``):
    intra_op_threads   threads per call (default: cores / instances). torch's setting is per
                       thread, so it is applied in each thread that runs the model and leaves
                       other models (torch or not) in the process alone.

Importing this module sets OMP_WAIT_POLICY=PASSIVE unless it is set (see below): idle torch
threads then sleep instead of spinning on cores the rest of the server needs.

Devices: "cuda" / "cuda:N" move the module there (``.to(device)``) and each batch's inputs
once per call, and the outputs back once; "auto" is cuda:0 when torch sees a CUDA device.

TorchScript is deprecated upstream (torch 2.13 warns on torch.jit.load) in favour of
torch.export; both load here.
"""

from __future__ import annotations

import logging
import os
import threading
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# torch's OpenMP threads (libgomp) spin-wait after every parallel region by default. In a
# server they share the cores with the event loop, other engines and each other, and a spinning
# thread steals the core a descheduled one needs: the peers' mlp ran 4x slower with 2 threads
# than with 1 on the loaded 2-core machines. Passive waiting unless the operator chose; it must
# be set before torch loads libgomp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from ..datatypes import BF16
from ..errors import EngineError, ModelLoadError
from ..model_config import TensorSpec
from . import LoadOptions, nvidia_device

log = logging.getLogger("cinfer")

#: torch dtypes -> KServe datatypes (torch has no string tensors: no BYTES).
TORCH_TYPES = {
    torch.bool: "BOOL",
    torch.uint8: "UINT8",
    torch.uint16: "UINT16",
    torch.uint32: "UINT32",
    torch.uint64: "UINT64",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
    torch.bfloat16: "BF16",
}
KNOWN_PARAMETERS = {"intra_op_threads"}

#: The intra-op thread count last applied in each thread (torch's setting is per thread).
_applied = threading.local()
#: torch.export.load keeps its deserializer in a module global ("_CURRENT_DESERIALIZER is
#: already set" when two load at once), and versions load in parallel threads.
_loading = threading.Lock()


class TorchEngine:
    """Runs a TorchScript module or a torch.export program; instances share the module."""

    default_file = "model.pt"

    def __init__(self, options: LoadOptions) -> None:
        path = options.path
        declared_inputs, declared_outputs = _declared(options)
        self._threads = _threads(options)
        self.device = _device(options.device, path)
        # On the CPU, torch's OpenMP team belongs to the calling thread (and would inherit a
        # pinned caller's single core); on a GPU the caller only waits.
        self.own_threads = self.device != "cpu"
        self._torch_device = torch.device(self.device)
        self._exported = path.suffix == ".pt2"
        _check_archive(path)
        if self._exported:
            self._module, found_inputs, found_outputs = _load_exported(
                path, self._torch_device, declared_inputs, declared_outputs
            )
            self.inputs, self.outputs = found_inputs, found_outputs
        else:
            self._module = _load_script(path, self._torch_device)
            self.inputs, self.outputs = list(declared_inputs), list(declared_outputs)
        self._input_names = [t.name for t in declared_inputs]
        self._output_names = [t.name for t in declared_outputs]
        self._declared = {t.name: t for t in declared_outputs}
        self._to_device = self.device != "cpu"

    def resize(self, instances: int) -> None:
        """Instances are threads sharing the one module: nothing to load or free."""

    def run(
        self, instance: int, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        if getattr(_applied, "threads", None) != self._threads:
            _apply_threads(self._threads)
        args = [_to_tensor(inputs[name]) for name in self._input_names]
        if self._to_device:
            args = [a.to(self._torch_device) for a in args]
        try:
            with torch.inference_mode():
                result = self._module(*args)
        except Exception as exc:  # TorchScript raises torch.jit.Error, eager code anything
            raise EngineError(f"torch model failed: {_short(exc)}") from exc
        mapped = self._map(result)
        return {name: self._to_array(name, mapped[name]) for name in outputs}

    def close(self) -> None:
        self._module = _closed

    def _map(self, result: Any) -> Mapping[str, Any]:
        """Name the returned value(s) by the declared outputs."""
        names = self._output_names
        if isinstance(result, torch.Tensor):
            if len(names) != 1:
                raise EngineError(
                    f"the model returned one tensor, but model.toml declares {len(names)} "
                    f"outputs ({', '.join(names)})"
                )
            return {names[0]: result}
        if isinstance(result, (tuple, list)):
            if len(result) != len(names):
                raise EngineError(
                    f"the model returned a {type(result).__name__} of {len(result)}, but "
                    f"model.toml declares {len(names)} outputs ({', '.join(names)})"
                )
            return dict(zip(names, result))
        if isinstance(result, dict):
            missing = [n for n in names if n not in result]
            if missing:
                raise EngineError(
                    f"the model returned a dict without the declared output(s) {missing} "
                    f"(its keys: {', '.join(map(str, result))})"
                )
            return result
        raise EngineError(
            f"the model returned a {type(result).__name__}; expected a tensor, a tuple or "
            "list of tensors, or a dict of them"
        )

    def _to_array(self, name: str, value: Any) -> np.ndarray:
        if not isinstance(value, torch.Tensor):
            raise EngineError(f"output '{name}': the model returned a {type(value).__name__}")
        spec = self._declared[name]
        if TORCH_TYPES.get(value.dtype) != spec.datatype:
            raise EngineError(
                f"output '{name}': the model returned {value.dtype}, model.toml declares "
                f"{spec.datatype}"
            )
        shape = value.shape
        want = spec.shape
        if len(shape) != len(want) or any(w not in (-1, s) for w, s in zip(want, shape)):
            raise EngineError(
                f"output '{name}': the model returned shape {list(shape)}, model.toml "
                f"declares {list(want)}"
            )
        if value.device.type != "cpu":
            value = value.cpu()
        if value.dtype == torch.bfloat16:
            value = value.view(torch.uint16)
            array: np.ndarray = value.numpy()
            return array.view(BF16)
        array = value.numpy()
        return array


def _closed(*args: Any) -> Any:
    raise EngineError("the model was unloaded")


def _declared(options: LoadOptions) -> tuple[Sequence[TensorSpec], Sequence[TensorSpec]]:
    if not options.declared_inputs or not options.declared_outputs:
        raise ModelLoadError(
            "the torch engine needs [[inputs]] and [[outputs]] in model.toml: a TorchScript "
            "file carries no tensor names or datatypes (the inputs, in order, are forward()'s "
            "arguments; the outputs name what it returns)"
        )
    for spec in (*options.declared_inputs, *options.declared_outputs):
        if spec.datatype == "BYTES":
            raise ModelLoadError(
                f"tensor '{spec.name}' is declared BYTES, but torch has no string tensors"
            )
    return options.declared_inputs, options.declared_outputs


def _threads(options: LoadOptions) -> int:
    params = dict(options.parameters)
    unknown = sorted(set(params) - KNOWN_PARAMETERS)
    if unknown:
        raise ModelLoadError(
            f"unknown torch parameter(s) {unknown} (known: {sorted(KNOWN_PARAMETERS)})"
        )
    value = params.get("intra_op_threads", options.threads)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelLoadError(f"parameter intra_op_threads = {value!r}: use a positive integer")
    return value


def _apply_threads(threads: int) -> None:
    """Set torch's intra-op threads for the calling thread only.

    torch (OpenMP) keeps the count per thread, but a thread's first parallel op copies the
    process-wide value set last by any thread; running that first-use initialisation before
    setting our own keeps another model's setting from replacing ours later.
    """
    torch.get_num_threads()
    torch.set_num_threads(threads)
    _applied.threads = threads


def _device(device: str, path: Path) -> str:
    kind, index = nvidia_device("torch", device)
    if kind == "cpu":
        return "cpu"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    build = f"torch {torch.__version__}" + (
        f" (CUDA {torch.version.cuda})" if torch.version.cuda else " (a CPU-only build)"
    )
    if kind == "auto":
        if count:
            return "cuda:0"
        log.info('%s: device = "auto": %s sees no CUDA device; running on CPU', path, build)
        return "cpu"
    if index >= count:
        sees = f"sees {count} CUDA device(s)" if count else "sees no CUDA device"
        raise ModelLoadError(f"device {device!r} is not available: {build} {sees}")
    return f"cuda:{index}"


def _check_archive(path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"missing model file {path}")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"{path} is not a PyTorch archive (TorchScript .pt and torch.export .pt2 files "
            "are zip archives): the file is damaged or of another format"
        )


def _load_script(path: Path, device: torch.device) -> Callable[..., Any]:
    try:
        module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise ModelLoadError(
            f"torch.jit.load cannot read {path} as TorchScript (torch.export programs need "
            f"the .pt2 suffix): {_short(exc)}"
        ) from exc
    module.eval()
    return module  # type: ignore[no-any-return]


def _load_exported(
    path: Path,
    device: torch.device,
    declared_inputs: Sequence[TensorSpec],
    declared_outputs: Sequence[TensorSpec],
) -> tuple[Callable[..., Any], list[TensorSpec], list[TensorSpec]]:
    """The program's module and its signature, named by the declaration (inputs by position,
    outputs by position or by dict key)."""
    try:
        with _loading:
            program = torch.export.load(str(path))
    except Exception as exc:
        raise ModelLoadError(
            f"torch.export.load cannot read {path} (TorchScript files need the .pt suffix): "
            f"{_short(exc)}"
        ) from exc
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    user_inputs = set(program.graph_signature.user_inputs)
    placeholders = [
        n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs
    ]
    if len(placeholders) != len(declared_inputs):
        raise ModelLoadError(
            f"{path}: the exported program takes {len(placeholders)} input(s) "
            f"({', '.join(n.name for n in placeholders)}), model.toml declares "
            f"{len(declared_inputs)} ({', '.join(t.name for t in declared_inputs)})"
        )
    inputs = [
        _spec(spec.name, node.meta.get("val"), "input")
        for spec, node in zip(declared_inputs, placeholders)
    ]
    (returned,) = next(n for n in program.graph.nodes if n.op == "output").args
    values = [node.meta.get("val") for node in returned]
    out_spec = program.call_spec.out_spec
    if out_spec is not None and out_spec.type is dict:
        names = [str(key) for key in out_spec.context]
    elif len(values) == len(declared_outputs):
        names = [t.name for t in declared_outputs]
    else:
        raise ModelLoadError(
            f"{path}: the exported program returns {len(values)} output(s), model.toml "
            f"declares {len(declared_outputs)} ({', '.join(t.name for t in declared_outputs)})"
        )
    outputs = [_spec(name, value, "output") for name, value in zip(names, values)]
    return program.module(), inputs, outputs


def _spec(name: str, value: Any, kind: str) -> TensorSpec:
    """A TensorSpec from an exported program's example value (a FakeTensor)."""
    if not isinstance(value, torch.Tensor):
        raise ModelLoadError(f"{kind} '{name}' of the exported program is not a tensor")
    datatype = TORCH_TYPES.get(value.dtype)
    if datatype is None:
        raise ModelLoadError(f"{kind} '{name}' is {value.dtype}, which has no KServe datatype")
    shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
    return TensorSpec.model_validate({"name": name, "datatype": datatype, "shape": shape})


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    if not array.flags.writeable:
        # Request bodies are read-only buffers; torch wants memory it may write (and a model
        # may change its inputs in place).
        array = array.copy()
    if array.dtype == BF16:
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _short(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(exc).__name__
