"""Engines: what runs a model file. Each is one module, found by name in `ENGINES`.

An engine is anything with the `Engine` shape; there is no base class to inherit. Engine
modules are imported only when a model asks for them, so a repository of ONNX models never
imports torch or openvino (tests/engines/test_lazy_imports.py holds that).

Devices: model.toml's `device` reaches the engine as `LoadOptions.device`; the engine resolves
it ("auto" -> what it found) and reports the result as `Engine.device`. A device the engine
cannot use is a `ModelLoadError` naming the device and what is installed.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import ConfigError, ModelLoadError
from ..model_config import ParameterValue, TensorSpec

#: Engine name -> "module:Class", imported on first use (uvicorn's config.py does the same).
ENGINES: dict[str, str] = {
    "onnxruntime": "server.engines.onnxruntime:ONNXRuntimeEngine",
    "openvino": "server.engines.openvino:OpenVINOEngine",
    "torch": "server.engines.torch:TorchEngine",
    "python": "server.engines.python:PythonEngine",
    "sklearn": "server.engines.sklearn:SklearnEngine",
}

#: The pip extra that installs each engine's runtime.
EXTRAS = {"openvino": "openvino", "torch": "torch", "sklearn": "sklearn"}

CUDA = re.compile(r"^cuda(?::(\d+))?$")


@dataclass(frozen=True)
class LoadOptions:
    """What an engine needs to load one version."""

    path: Path
    """The model file."""
    instances: int = 1
    """Engine instances that run in parallel (each gets its own `run(instance=...)` slot)."""
    threads: int = 1
    """Intra-op threads per instance unless parameters say otherwise."""
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)
    device: str = "cpu"
    """model.toml's device: cpu, cuda, cuda:N, auto, or an OpenVINO device name."""
    declared_inputs: Sequence[TensorSpec] | None = None
    declared_outputs: Sequence[TensorSpec] | None = None
    """The declared schema with full shapes (batch dim included), for engines whose files
    carry no signature."""
    python: str | None = None
    """The interpreter of the python and sklearn engines' workers (None: the server's)."""
    timeout_s: float | None = None
    """The longest a python or sklearn predict may run (None: no limit)."""


class Engine(Protocol):
    """One loaded model version, with `instances` independent runners."""

    inputs: list[TensorSpec]
    """Inputs as the model file declares them, full shapes (batch dim included), -1 = dynamic."""
    outputs: list[TensorSpec]
    device: str
    """Where the model runs, resolved ("cpu", "cuda:0", OpenVINO's "CPU" or "GPU.0")."""
    own_threads: bool
    """True when the engine computes in threads of its own (or on a GPU), so the thread that
    calls `run` mostly waits and may share a core with the event loop (see affinity.py)."""

    def run(
        self, instance: int, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Run one (possibly batched) request on instance `instance`; called from its thread."""
        ...

    def resize(self, instances: int) -> None:
        """Change the number of instances without reloading the model."""
        ...

    def close(self) -> None:
        """Free the engine's resources; no `run` is in progress or will follow."""
        ...


class EngineClass(Protocol):
    default_file: str

    def __call__(self, options: LoadOptions) -> Engine: ...


def engine_class(name: str) -> EngineClass:
    """The engine class registered as `name`; a clear ConfigError when unknown or missing."""
    try:
        target = ENGINES[name]
    except KeyError:
        raise ConfigError(
            f"unknown engine {name!r} (known: {', '.join(sorted(ENGINES))})"
        ) from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = EXTRAS.get(name)
        hint = f"; pip install 'cinfer[{extra}]'" if extra else ""
        raise ConfigError(f"engine {name!r} is not installed ({exc}){hint}") from exc
    cls: EngineClass = getattr(module, attr)
    return cls


def cpu_count() -> int:
    """CPUs this process may run on (respects affinity and container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def nvidia_device(engine: str, device: str) -> tuple[str, int]:
    """For engines that run on NVIDIA GPUs: ("cpu" | "cuda" | "auto", CUDA device index)."""
    if device.lower() in ("cpu", "auto"):
        return device.lower(), 0
    found = CUDA.match(device)
    if found:
        return "cuda", int(found.group(1) or 0)
    raise ModelLoadError(
        f"device {device!r} is an OpenVINO device name; the {engine} engine runs on "
        "cpu, cuda, cuda:N or auto"
    )
