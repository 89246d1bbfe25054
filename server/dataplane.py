"""What the API does, independent of HTTP: metadata, config, readiness, infer, repository.

Every front door calls this class and nothing below it: the HTTP endpoints (http/endpoints.py,
and http/infer.py's hot path) are thin wrappers around it, as MLServer's DataPlane is shared by
its REST and gRPC servers. It takes and returns transport-free values: `InferRequest` and
`InferResponse` (inference.py) and the typed answers declared in wire.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from . import __version__, decoding, pipelines, statistics, wire
from .cache import ResponseCache
from .classification import classify
from .counters import failure_reason
from .datatypes import TRITON
from .errors import CinferError, InvalidRequest, NotFound, Unavailable, show
from .inference import InferRequest, InferResponse
from .model_config import ModelConfig, TensorSpec
from .models import Model, ModelState, ModelVersion
from .reconciler import Reconciler
from .repository import is_model_name
from .scheduler import InstancePool
from .settings import RepositoryMode
from .sharedmemory import Regions
from .watcher import Watcher

log = logging.getLogger("cinfer")

T = TypeVar("T")

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "statistics",
    "system_shared_memory",
]

#: Engine -> Triton's platform / backend names (clients key behaviour off "platform").
PLATFORMS = {
    "onnxruntime": ("onnxruntime_onnx", "onnxruntime"),
    "openvino": ("openvino", "openvino"),
    "torch": ("pytorch_libtorch", "pytorch"),
    "pipeline": ("ensemble", "ensemble"),  # Triton's name for models run as steps of one
    "python": ("python", "python"),
    "sklearn": ("sklearn", "python"),  # run by the python engine's workers
}


class DataPlane:
    """What the API does. `mode` says how the repository is followed ([repository] mode):
    watch loads at start-up and then follows the folder, startup loads once, explicit loads
    only what the load API asks for."""

    def __init__(
        self,
        reconciler: Reconciler,
        mode: RepositoryMode = "watch",
        settle_ms: int = 500,
        cache: ResponseCache | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.cache = cache
        """The response cache ([cache] in config.toml), for models that enable it."""
        if cache is not None:
            reconciler.retired.append(cache.forget)  # a reload or unload empties its entries
        self.mode = mode
        self.settle_ms = settle_ms
        self.ready = False
        """True once the start-up load has finished (failed models do not hold it back, nor
        do later reloads: Kubernetes must not pull a serving pod out of its Service)."""
        self.watcher: Watcher | None = None
        self.regions = Regions()
        """The clients' registered shared-memory regions (every door's)."""
        self._loaded: asyncio.Event | None = None
        self._startup: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind to the running loop and start loading the repository in the background, so
        liveness answers while models load and readiness flips when they are done."""
        self._loaded = asyncio.Event()
        reconciler = self.reconciler
        reconciler.start(asyncio.get_running_loop())
        if self.mode == "watch":
            # Started before the start-up load lists the folder, so no change falls between.
            self.watcher = Watcher(
                reconciler.root, self.settle_ms, reconciler.changed, lambda: list(reconciler.models)
            )
            self.watcher.start()
        self._startup = asyncio.create_task(self._initial_load())

    async def _initial_load(self) -> None:
        try:
            if self.mode != "explicit":
                await self.reconciler.load_all()
        except CinferError as exc:
            log.error("start-up load failed: %s", exc)
        finally:
            self.ready = True
            assert self._loaded is not None
            self._loaded.set()
            log.info(
                "start-up load done (%s mode): %d model(s)",
                self.mode,
                len(self.reconciler.models),
            )

    async def wait_ready(self) -> None:
        """Wait for the start-up load (tests and tools)."""
        assert self._loaded is not None, "start() first"
        await self._loaded.wait()

    async def stop(self) -> None:
        """Stop following the folder, finish or cancel the start-up load, unload everything."""
        if self.watcher is not None:
            await self.watcher.stop()
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._startup
        if self.cache is not None:  # shutting down retires every version: keep Redis' entries
            self.reconciler.retired.remove(self.cache.forget)
        await self.reconciler.close()
        if self.cache is not None:
            await self.cache.close()
        await asyncio.to_thread(decoding.shutdown)
        self.regions.close()

    # -- server ---------------------------------------------------------------------------

    def server_metadata(self) -> wire.ServerMetadataAnswer:
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

    def model_metadata(self, name: str, version: str | None) -> wire.ModelMetadataAnswer:
        model = self.model(name)
        found = model.get(version)
        config = found.config
        answer: wire.ModelMetadataAnswer = {
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
        }
        if found.reason:
            answer["reason"] = found.reason
        return answer

    def model_config(self, name: str, version: str | None) -> wire.ModelConfigAnswer:
        """Triton's ModelConfig as JSON (perf_analyzer and tritonclient read it)."""
        found = self.version(name, version)
        config = found.config
        platform, backend = PLATFORMS.get(config.engine, (config.engine, config.engine))
        out: wire.ModelConfigAnswer = {
            "name": name,
            "platform": platform,
            "backend": backend,
            "version_policy": config.version_policy.as_triton(),
            "max_batch_size": config.max_batch_size,
            "input": [_config_input(t, config) for t in config.inputs or ()],
            "output": [
                {
                    "name": t.name,
                    "data_type": TRITON[t.datatype],
                    "dims": list(t.shape),
                    "label_filename": config.labels.get(t.name, ""),
                    "is_shape_tensor": False,
                }
                for t in config.outputs or ()
            ],
            "instance_group": [_instance_group(name, config)],
            "default_model_filename": config.file or "",
            "parameters": {k: {"string_value": str(v)} for k, v in config.parameters.items()},
            "model_transaction_policy": {"decoupled": False},
            "response_cache": {"enable": config.cache.enabled},
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

    def serving(self, name: str, version: str | None) -> tuple[ModelVersion, InstancePool]:
        """The version a request goes to and its pool; 404 / 503 when there is none."""
        found = self.reconciler.get(name).get(version)
        return found, _pool(found)

    async def infer(self, model: str, version: str | None, request: InferRequest) -> InferResponse:
        """Check `request` against the model's schema, run it, count it: the one infer path.

        Every door goes through here (through `exchange` when it has wire bytes to decode
        and encode); a client error is an `InvalidRequest` naming the tensor.
        """
        return await self.exchange(model, version, lambda: request, _identity)

    async def exchange(
        self,
        model: str,
        version: str | None,
        decode: Callable[[], InferRequest],
        encode: Callable[[InferResponse], T],
    ) -> T:
        """`infer` for a door that decodes its request and encodes its answer itself.

        `decode` and `encode` run on the event loop; their time is counted as the request's
        compute_input and compute_output (what Triton's statistics mean by them), and the
        request as a success only once `encode` has returned, before the door sends it: a
        client that reads the statistics after its response finds its request in them.

        With the response cache on for the model (cache.py), a request answered before is
        answered from it, after decoding and checking and before any image decoding or
        engine; a hit is a success counted in cache_hit, not in queue or compute.
        """
        start = time.perf_counter_ns()
        found = self.reconciler.get(model).get(version)
        if found.pipeline:
            return await self._pipeline(found, decode, encode, start)
        pool = _pool(found)
        requests = found.requests
        # A foreign exception is the engine's only while it runs; one from decoding, checking
        # or encoding is a bug of ours, not a backend failure (issue 11: a body that crashed
        # the decoder was counted as reason="BACKEND").
        unexpected = "OTHER"
        key = None
        try:
            request = decode()
            check_target(request, found)
            arrays, outputs, rows = found.check(request)
            cache = self.cache
            if cache is not None and found.config.cache.enabled:
                looked = time.perf_counter_ns()
                key = cache.key(found, request)
                hit = None if key is None else await cache.get(found, key)
                if hit is not None:
                    # Give the loop back once before answering: over HTTP at c=32, a hit
                    # answered in the step that read it cost the loop more per request (52
                    # against 45 us, tools/measure_cache.py) than one that lets the other
                    # connections' reads run first (docs/performance.md, issue 16).
                    await asyncio.sleep(0)
                    found.cache.hits += 1
                    found.cache.hit_ns += time.perf_counter_ns() - looked
                    response = InferResponse(found.name, str(found.version), hit, request, rows)
                    answer = encode(response)
                    requests.succeeded(time.perf_counter_ns() - start)
                    return answer
                if key is not None:  # a miss is counted when it is found to be one
                    found.cache.misses += 1
                    found.cache.miss_ns += time.perf_counter_ns() - looked
                again, pool = self.serving(model, version)
                if again is not found:  # reloaded while Redis was asked: the new one answers
                    found, requests, key = again, again.requests, None
                    arrays, outputs, rows = found.check(request)
            if found.images is not None:  # files in, the model's tensors out (images.py)
                arrays = await found.images.tensors(arrays)
            decoded = time.perf_counter_ns()
            unexpected = "BACKEND"
            results = await pool.submit(arrays, outputs, rows)
            ran = time.perf_counter_ns()
            unexpected = "OTHER"
            if request.outputs is not None and any(o.classification for o in request.outputs):
                results = _classified(found, request, results, rows)
            if key is not None:  # only a successful answer is kept
                stored = time.perf_counter_ns()
                self.cache.put(found, key, results)  # type: ignore[union-attr]
                found.cache.miss_ns += time.perf_counter_ns() - stored
            answer = encode(InferResponse(found.name, str(found.version), results, request, rows))
        except CinferError as exc:
            requests.failed(failure_reason(exc), time.perf_counter_ns() - start)
            raise
        except asyncio.CancelledError:
            requests.failed("CANCELED", time.perf_counter_ns() - start)
            raise
        except Exception:
            requests.failed(unexpected, time.perf_counter_ns() - start)
            raise
        done = time.perf_counter_ns()
        requests.decode_ns += decoded - start
        requests.encode_ns += done - ran
        requests.succeeded(done - start)
        return answer

    async def _pipeline(
        self,
        found: ModelVersion,
        decode: Callable[[], InferRequest],
        encode: Callable[[InferResponse], T],
        start: int,
    ) -> T:
        """A pipeline's request: checked against its inputs, its steps run through `infer`
        (pipelines.py), and counted once, as a whole, in the pipeline's statistics."""
        requests = found.requests
        try:
            if not found.ready:
                raise _unavailable(found)
            request = decode()
            check_target(request, found)
            arrays, outputs, rows = found.check(request)
            decoded = time.perf_counter_ns()
            results = await pipelines.run(self.infer, self.reconciler.models, found, arrays)
            ran = time.perf_counter_ns()
            chosen = {name: results[name] for name in outputs}
            answer = encode(InferResponse(found.name, str(found.version), chosen, request, rows))
        except CinferError as exc:
            requests.failed(failure_reason(exc), time.perf_counter_ns() - start)
            raise
        except asyncio.CancelledError:
            requests.failed("CANCELED", time.perf_counter_ns() - start)
            raise
        except Exception:
            requests.failed("OTHER", time.perf_counter_ns() - start)
            raise
        done = time.perf_counter_ns()
        requests.decode_ns += decoded - start
        requests.encode_ns += done - ran
        requests.succeeded(done - start)
        return answer

    async def stream(
        self, model: str, version: str | None, request: InferRequest
    ) -> AsyncIterator[InferResponse]:
        """The responses to `request` as a stream: one for the models served today, several
        for a model that answers in parts. A door that streams consumes both through this."""
        yield await self.infer(model, version, request)

    # -- statistics -----------------------------------------------------------------------

    async def model_statistics(
        self,
        name: str | None,
        version: str | None,
        allowed: Callable[[str], bool] | None = None,
    ) -> dict[str, Any]:
        """Triton's statistics extension: every loaded version (of the models `allowed`
        accepts), one model's, or one version (built in slices that give the event loop back,
        see statistics.py)."""
        if name is None:
            names = sorted(self.reconciler.models)
            if allowed is not None:
                names = [n for n in names if allowed(n)]
            models = [self.reconciler.models[n] for n in names]
            versions = [v for m in models for _, v in sorted(m.versions.items())]
        elif version:
            versions = [self.model(name).get(version)]
        else:
            versions = [v for _, v in sorted(self.model(name).versions.items())]
        return await statistics.model_stats(versions)

    # -- repository -----------------------------------------------------------------------

    async def repository_index(self, ready_only: bool) -> list[dict[str, str]]:
        return await self.reconciler.index(ready_only)

    async def load_model(self, name: str, parameters: dict[str, Any] | None) -> None:
        """Re-read the model's folder and apply it (load, reload with swap-when-ready, or
        nothing when unchanged); an error names what failed and what still serves."""
        if parameters:
            raise InvalidRequest(
                "load parameters (config overrides, file contents) are not supported: "
                "edit the model folder instead"
            )
        if not is_model_name(name) or not await asyncio.to_thread(
            (self.reconciler.root / name).is_dir
        ):
            raise NotFound(f"no folder for model '{name}' in the repository")
        outcome = await self.reconciler.load(name)
        if outcome.failures:
            serving = ", ".join(map(str, outcome.serving))
            still = f" (still serving version {serving})" if serving else ""
            raise InvalidRequest(
                f"failed to load model '{name}': {'; '.join(outcome.failures)}{still}"
            )

    async def unload_model(self, name: str) -> None:
        await self.reconciler.unload(name)


def _instance_group(name: str, config: ModelConfig) -> wire.InstanceGroup:
    """Triton's instance_group from the device the engine resolved ("cuda:1", "GPU.0")."""
    device = config.device
    if device.startswith(("cuda", "GPU")):
        index = re.search(r"(\d+)$", device)
        gpus = [int(index.group(1)) if index else 0]
        return {"name": name, "kind": "KIND_GPU", "count": config.instances, "gpus": gpus}
    return {"name": name, "kind": "KIND_CPU", "count": config.instances, "gpus": []}


def _pool(found: ModelVersion) -> InstancePool:
    """The pool of a READY version; 503 with why otherwise."""
    if found.pipeline:  # its steps have the pools: it answers infer requests only
        raise Unavailable(f"model '{found.name}' is a pipeline: send it infer requests")
    if found.pool is None or found.state is not ModelState.READY:
        raise _unavailable(found)
    return found.pool


def _unavailable(found: ModelVersion) -> Unavailable:
    return Unavailable(
        f"model '{found.name}' version {found.version} is {found.state.value}"
        + (f": {found.reason}" if found.reason else "")
    )


def _tensor(shape: tuple[int, ...], name: str, datatype: str) -> wire.Tensor:
    return {"name": name, "datatype": datatype, "shape": list(shape)}


def _config_input(spec: TensorSpec, config: ModelConfig) -> wire.ConfigInput:
    entry: wire.ConfigInput = {
        "name": spec.name,
        "data_type": TRITON[spec.datatype],
        "format": "FORMAT_NONE",
        "dims": list(spec.shape),
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": False,
    }
    image = config.images.get(spec.name)
    if image is not None:  # files are sent; the preprocessing says what the model gets
        entry["format"] = f"FORMAT_{image.layout}"
        entry["image"] = image.model_dump(mode="json")
    return entry


def _classified(
    found: ModelVersion, request: InferRequest, results: dict[str, Any], rows: int
) -> dict[str, Any]:
    """The classification extension: each output asked for it as its top classes' strings."""
    out = dict(results)
    batched = found.config.max_batch_size > 0
    for wanted in request.outputs or ():
        if wanted.classification:
            out[wanted.name] = classify(
                wanted.name, results[wanted.name], wanted.classification, rows, batched,
                found.labels.get(wanted.name),
            )  # fmt: skip
    return out


def _identity(response: InferResponse) -> InferResponse:
    return response


def check_target(request: InferRequest, found: ModelVersion) -> None:
    """The model and version a body names (the KServe SDK names the model) must be the ones
    the request is addressed to: a body is never routed by them, so a mismatch is a 400."""
    if request.model_name is not None and request.model_name != found.name:
        raise InvalidRequest(
            f"model_name {show(request.model_name)} in the body does not match the model "
            f"{show(found.name)} the request is addressed to"
        )
    if request.model_version not in (None, "", str(found.version)):
        raise InvalidRequest(
            f"model_version {show(request.model_version)} in the body does not match version "
            f"{show(str(found.version))} of model {show(found.name)} that serves the request"
        )
