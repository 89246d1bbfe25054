"""Engines: what runs a model file. Each is one module, found by name in `ENGINES`.

An engine is anything with the `Engine` shape; there is no base class to inherit. Engine
modules are imported only when a model asks for them, so a repository of ONNX models never
imports torch or openvino.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import ConfigError
from ..model_config import ParameterValue, TensorSpec

#: Engine name -> "module:Class", imported on first use (uvicorn's config.py does the same).
ENGINES: dict[str, str] = {
    "onnxruntime": "server.engines.onnxruntime:ONNXRuntimeEngine",
}


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
    declared_inputs: Sequence[TensorSpec] | None = None
    declared_outputs: Sequence[TensorSpec] | None = None
    """The declared schema with full shapes (batch dim included), for engines whose files
    carry no signature."""


class Engine(Protocol):
    """One loaded model version, with `instances` independent runners."""

    inputs: list[TensorSpec]
    """Inputs as the model file declares them, full shapes (batch dim included), -1 = dynamic."""
    outputs: list[TensorSpec]

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
        raise ConfigError(f"engine {name!r} is not installed: {exc}") from exc
    cls: EngineClass = getattr(module, attr)
    return cls


def cpu_count() -> int:
    """CPUs this process may run on (respects affinity and container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
