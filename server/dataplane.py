"""What the API does, independent of HTTP: metadata, config, readiness, infer, repository.

The Starlette endpoints in app.py are thin wrappers around this class (as MLServer's DataPlane
is shared by its REST and gRPC servers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

import numpy as np

from . import __version__
from .datatypes import TRITON
from .errors import CinferError, InvalidRequest, NotFound, Unavailable
from .model_config import ModelConfig
from .models import Model, ModelState, ModelVersion
from .protocol import InferRequest
from .reconciler import Reconciler

log = logging.getLogger("cinfer")

EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository"]

#: Engine -> Triton's platform / backend names (clients key behaviour off "platform").
PLATFORMS = {
    "onnxruntime": ("onnxruntime_onnx", "onnxruntime"),
    "openvino": ("openvino", "openvino"),
    "torch": ("pytorch_libtorch", "pytorch"),
}


class DataPlane:
    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.ready = False
        """True once the start-up load has finished (failed models do not hold it back)."""
        self._loaded: asyncio.Event | None = None
        self._startup: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind to the running loop and start loading the repository in the background, so
        liveness answers while models load and readiness flips when they are done."""
        self._loaded = asyncio.Event()
        self.reconciler.start(asyncio.get_running_loop())
        self._startup = asyncio.create_task(self._initial_load())

    async def _initial_load(self) -> None:
        try:
            await self.reconciler.load_all()
        except CinferError as exc:
            log.error("start-up load failed: %s", exc)
        finally:
            self.ready = True
            assert self._loaded is not None
            self._loaded.set()
            log.info("start-up load done: %d model(s)", len(self.reconciler.models))

    async def wait_ready(self) -> None:
        """Wait for the start-up load (tests and tools)."""
        assert self._loaded is not None, "start() first"
        await self._loaded.wait()

    async def stop(self) -> None:
        """Finish the start-up load if it is still running, then unload everything."""
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._startup
        await self.reconciler.close()

    # -- server ---------------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "cinfer", "version": __version__, "extensions": list(EXTENSIONS)}

    # -- models ---------------------------------------------------------------------------

    def model(self, name: str) -> Model:
        return self.reconciler.get(name)

    def version(self, name: str, version: str | None) -> ModelVersion:
        return self.model(name).get(version)

    def model_ready(self, name: str, version: str | None) -> bool:
        try:
            return self.version(name, version).ready
        except Unavailable:
            return False

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        model = self.model(name)
        found = model.get(version)
        config = found.config
        return {
            "name": name,
            "versions": [str(v) for v in sorted(model.versions) if model.versions[v].ready],
            "platform": PLATFORMS.get(config.engine, (config.engine,))[0],
            "inputs": [
                _tensor(config.batch_shape(t), t.name, t.datatype) for t in config.inputs or ()
            ],
            "outputs": [
                _tensor(config.batch_shape(t), t.name, t.datatype) for t in config.outputs or ()
            ],
            "state": found.state.value,
            **({"reason": found.reason} if found.reason else {}),
        }

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        """Triton's ModelConfig as JSON (perf_analyzer and tritonclient read it)."""
        found = self.version(name, version)
        config = found.config
        platform, backend = PLATFORMS.get(config.engine, (config.engine, config.engine))
        out: dict[str, Any] = {
            "name": name,
            "platform": platform,
            "backend": backend,
            "version_policy": config.version_policy.as_triton(),
            "max_batch_size": config.max_batch_size,
            "input": [
                {
                    "name": t.name,
                    "data_type": TRITON[t.datatype],
                    "format": "FORMAT_NONE",
                    "dims": list(t.shape),
                    "is_shape_tensor": False,
                    "allow_ragged_batch": False,
                    "optional": False,
                }
                for t in config.inputs or ()
            ],
            "output": [
                {
                    "name": t.name,
                    "data_type": TRITON[t.datatype],
                    "dims": list(t.shape),
                    "label_filename": "",
                    "is_shape_tensor": False,
                }
                for t in config.outputs or ()
            ],
            "instance_group": [_instance_group(name, config)],
            "default_model_filename": config.file or "",
            "parameters": {k: {"string_value": str(v)} for k, v in config.parameters.items()},
            "model_transaction_policy": {"decoupled": False},
        }
        if config.description:
            out["description"] = config.description
        if config.batching is not None:
            b = config.batching
            out["dynamic_batching"] = {
                "preferred_batch_size": list(b.preferred_batch_sizes),
                "max_queue_delay_microseconds": b.max_queue_delay_us,
                "preserve_ordering": False,
                "default_queue_policy": {
                    "timeout_action": "REJECT",
                    "default_timeout_microseconds": b.timeout_us,
                    "allow_timeout_override": False,
                    "max_queue_size": b.max_queue_size,
                },
            }
        return out

    async def infer(
        self, name: str, version: str | None, request: InferRequest
    ) -> tuple[ModelVersion, dict[str, np.ndarray]]:
        found = self.version(name, version)
        if found.state is not ModelState.READY:
            raise Unavailable(
                f"model '{name}' version {found.version} is {found.state.value}"
                + (f": {found.reason}" if found.reason else "")
            )
        arrays, outputs, rows = found.prepare(request.inputs, request.output_names)
        return found, await found.infer(arrays, outputs, rows)

    # -- repository -----------------------------------------------------------------------

    def repository_index(self, ready_only: bool) -> list[dict[str, str]]:
        return self.reconciler.index(ready_only)

    async def load_model(self, name: str, parameters: dict[str, Any] | None) -> None:
        if parameters:
            raise InvalidRequest(
                "load parameters (config overrides, file contents) are not supported: "
                "edit the model folder instead"
            )
        if not (self.reconciler.root / name).is_dir():
            raise NotFound(f"no folder for model '{name}' in the repository")
        model = await self.reconciler.load(name)
        if not any(v.ready for v in model.versions.values()):
            reasons = [v.reason for v in model.versions.values() if v.reason] or [model.reason]
            raise InvalidRequest(f"failed to load model '{name}': {'; '.join(reasons)}")

    async def unload_model(self, name: str) -> None:
        await self.reconciler.unload(name)


def _instance_group(name: str, config: ModelConfig) -> dict[str, Any]:
    """Triton's instance_group from the device the engine resolved ("cuda:1", "GPU.0")."""
    device = config.device
    if device.startswith(("cuda", "GPU")):
        index = re.search(r"(\d+)$", device)
        gpus = [int(index.group(1)) if index else 0]
        return {"name": name, "kind": "KIND_GPU", "count": config.instances, "gpus": gpus}
    return {"name": name, "kind": "KIND_CPU", "count": config.instances, "gpus": []}


def _tensor(shape: tuple[int, ...], name: str, datatype: str) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape)}
