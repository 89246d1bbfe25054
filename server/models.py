"""Loaded models: a `ModelVersion` is one version folder turned into a running instance pool.

`load_version()` does the blocking work (engine load, schema check, warm-up) and is meant to
run in a worker thread; the result is READY, or raises `ModelLoadError` with the reason.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cachetools import LRUCache

from . import affinity, decoding, signature
from .classification import read_labels
from .counters import CacheStats, InstanceStats, RequestStats
from .datatypes import NUMPY
from .engines import Engine, LoadOptions, cpu_count, engine_class
from .errors import CinferError, InvalidRequest, ModelLoadError, NotFound, Unavailable, show
from .images import DEFAULT_MAX_PIXELS, Images
from .inference import InferInput, InferRequest
from .model_config import ModelConfig, Step
from .repository import Fingerprint, ModelSource
from .scheduler import Completions, InstancePool

log = logging.getLogger("cinfer")

MAX_SIGNATURES = 256
"""Request signatures (binary header layouts) a version remembers as checked."""


class ModelState(enum.StrEnum):
    UNKNOWN = "UNKNOWN"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


@dataclass(eq=False)
class ModelVersion:
    """One version of a model: its effective config and, when READY, its instance pool."""

    name: str
    version: int
    folder: Path
    config: ModelConfig
    """The effective config: inputs/outputs filled in and checked against the model file."""
    pool: InstancePool | None = None
    state: ModelState = ModelState.LOADING
    reason: str = ""
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    requests: RequestStats = field(default_factory=RequestStats)
    """Request outcomes, counted on the event loop."""
    cache: CacheStats = field(default_factory=CacheStats)
    """The response cache's hits, misses and entries for this version (cache.py)."""
    instance_stats: list[InstanceStats] = field(default_factory=list)
    """The pool's per-instance counters (kept after unload, for the statistics)."""
    declared: ModelConfig | None = None
    """model.toml as written when this version was loaded (before the schema was filled in
    from the model file): a reload compares it with the file on disk."""
    fingerprint: Fingerprint = ()
    """The files this version was loaded from (see repository.fingerprint)."""
    images: Images | None = None
    """Its image inputs (images.py): files in, the model's tensors out; None without."""
    labels: dict[str, list[str]] = field(default_factory=dict)
    """Output -> its class labels ([labels] in model.toml), for the classification extension."""
    pipeline: bool = False
    """engine = "pipeline": no pool; READY while its steps are (pipelines.refresh)."""
    waves: tuple[tuple[Step, ...], ...] = ()
    """A pipeline's steps in groups that run concurrently (pipelines.waves, set by refresh)."""

    def __post_init__(self) -> None:
        config = self.config
        self._inputs = {t.name: t for t in config.inputs or ()}
        self._shapes = {t.name: config.batch_shape(t) for t in config.inputs or ()}
        self._outputs = [t.name for t in config.outputs or ()]
        self._output_set = frozenset(self._outputs)
        self._max_batch = config.max_batch_size
        self._checked: LRUCache[object, tuple[tuple[tuple[str, int], ...], list[str], int]]
        self._checked = LRUCache(MAX_SIGNATURES)

    def check(self, request: InferRequest) -> tuple[dict[str, np.ndarray], list[str], int]:
        """`prepare` for a whole request; a request with a `signature` this version has
        already checked skips the checks (the binary fast path: same header, same answer)."""
        signature = request.signature
        inputs = request.inputs
        if signature is not None:
            known = self._checked.get(signature)
            if known is not None:
                order, outputs, rows = known
                return {name: inputs[i].array for name, i in order}, outputs, rows
        arrays, outputs, rows = self.prepare(inputs, request.output_names)
        if signature is not None:
            position = {tensor.name: i for i, tensor in enumerate(inputs)}
            self._checked[signature] = (tuple((n, position[n]) for n in arrays), outputs, rows)
        return arrays, outputs, rows

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    def prepare(
        self, inputs: Sequence[InferInput], outputs: Sequence[str] | None
    ) -> tuple[dict[str, np.ndarray], list[str], int]:
        """Check a decoded request against the schema: (arrays in model order, outputs, rows)."""
        specs = self._inputs
        if len(inputs) == len(specs) == 1 and inputs[0].name in specs:
            given = {inputs[0].name: inputs[0]}
        else:
            given = {}
            for tensor in inputs:
                if tensor.name in given:
                    raise InvalidRequest(f"input '{tensor.name}' is given more than once")
                if tensor.name not in specs:
                    raise InvalidRequest(
                        f"unknown input '{tensor.name}' for model '{self.name}' "
                        f"(it takes: {', '.join(specs)})"
                    )
                given[tensor.name] = tensor
        batched = self._max_batch > 0
        arrays: dict[str, np.ndarray] = {}
        rows = 1
        for name, spec in specs.items():
            found = given.get(name)
            if found is None:
                raise InvalidRequest(
                    f"missing input '{name}' for model '{self.name}' (it takes: {', '.join(specs)})"
                )
            if found.datatype != spec.datatype:
                raise InvalidRequest(
                    f"input '{name}': datatype {found.datatype} does not match the model's "
                    f"{spec.datatype}"
                )
            shape = found.array.shape
            want = self._shapes[name]
            if len(shape) != len(want):
                raise self._bad_shape(name, shape)
            for w, d in zip(want, shape):
                if w != d and w != -1:
                    raise self._bad_shape(name, shape)
            if batched:
                if not arrays:
                    rows = shape[0]
                    if not 0 < rows <= self._max_batch:
                        raise InvalidRequest(
                            f"input '{name}': batch of {rows} rows; model '{self.name}' takes "
                            f"1 to {self._max_batch} (max_batch_size)"
                        )
                elif shape[0] != rows:
                    raise InvalidRequest(
                        f"input '{name}': batch of {shape[0]} rows, but other inputs have {rows}"
                    )
            arrays[name] = found.array
        if outputs is None:
            return arrays, self._outputs, rows
        for out in outputs:
            if out not in self._output_set:
                raise InvalidRequest(
                    f"unknown output '{out}' requested from model '{self.name}' "
                    f"(it has: {', '.join(self._outputs)})"
                )
        return arrays, list(dict.fromkeys(outputs)), rows

    def _bad_shape(self, name: str, shape: tuple[int, ...]) -> InvalidRequest:
        return InvalidRequest(
            f"input '{name}': shape {list(shape)} does not fit the model's "
            f"{list(self._shapes[name])}"
        )


@dataclass(eq=False)
class Model:
    """A model name and the versions loaded (or failed) for it."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    """The versions requests are routed to (READY) or that failed (UNAVAILABLE)."""
    loading: dict[int, ModelVersion] = field(default_factory=dict)
    """Versions being loaded beside the serving ones; swapped in when READY."""
    reason: str = ""
    """Why the model as a whole is unavailable (model.toml unreadable, no versions)."""
    description: str = ""

    def get(self, version: str | None) -> ModelVersion:
        """The requested version, or the default: the highest READY version."""
        if version:
            try:
                found = self.versions[int(version)]
            except (KeyError, ValueError):
                available = ", ".join(str(v) for v in sorted(self.versions)) or "none"
                raise NotFound(
                    f"model '{self.name}' has no version {show(version)} (available: {available})"
                ) from None
            return found
        best = None
        for candidate in self.versions.values():
            if candidate.state is ModelState.READY and (
                best is None or candidate.version > best.version
            ):
                best = candidate
        if best is not None:
            return best
        if self.versions:
            return self.versions[max(self.versions)]
        raise Unavailable(f"model '{self.name}' is not available: {self.reason or 'no versions'}")


def load_version(
    source: ModelSource,
    version: int,
    completions: Completions,
    loop: asyncio.AbstractEventLoop,
    python_core: int | None = None,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
) -> ModelVersion:
    """Blocking: load, check, warm up and start one version. Raises ModelLoadError.

    With `python_core`, the version's engine threads share that core with the event loop
    when the engine computes in threads of its own (affinity.py).
    """
    started = time.perf_counter()
    if source.config.engine == "pipeline":  # no file, no engine: its steps run it
        loaded = ModelVersion(source.name, version, source.versions[version], source.config)
        loaded.pipeline = True
        loaded.state = ModelState.READY
        return loaded
    engine, effective = open_engine(source, version)
    config = source.config
    try:
        served, images, labels = serving(source, effective, max_image_pixels)
    except BaseException:
        engine.close()
        raise
    loaded = ModelVersion(source.name, version, source.versions[version], served)
    loaded.images = images
    loaded.labels = labels
    if hasattr(engine, "on_reason"):  # python workers: why an instance is down, while it is
        engine.on_reason = lambda reason: setattr(loaded, "reason", reason)
    pool = InstancePool(
        loaded.label,
        engine,
        effective,
        completions,
        loop,
        python_core if engine.own_threads else None,
    )
    pool.start(config.instances)
    loaded.pool = pool
    loaded.instance_stats = pool.stats
    loaded.state = ModelState.READY
    loaded.load_seconds = time.perf_counter() - started
    return loaded


def serving(
    source: ModelSource, effective: ModelConfig, max_image_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[ModelConfig, Images | None, dict[str, list[str]]]:
    """Blocking: what clients see of a version whose engine resolved `effective` (its image
    inputs as BYTES), its image inputs, and its outputs' labels (read from their files).
    Raises ModelLoadError naming the model.toml key that does not fit the model file."""
    images = Images.resolve(effective, max_image_pixels)
    labels = read_labels(effective, source.folder)
    if images is None:
        return effective, None, labels
    decoding.start_processes()  # a photo should not wait for them to start
    served = effective.model_copy(update={"inputs": images.served(effective.inputs or ())})
    return served, images, labels


def open_engine(source: ModelSource, version: int) -> tuple[Engine, ModelConfig]:
    """Blocking: one version's engine, loaded, its schema resolved against the file's and
    warmed up on every instance; with the effective config (the schema and device the engine
    resolved). Raises ModelLoadError naming what failed. The caller closes the engine."""
    # Engines start their compute threads here; they must not inherit a pinned mask.
    affinity.release()
    config = source.config
    folder = source.versions[version]
    try:
        cls = engine_class(config.engine)
    except CinferError as exc:
        raise ModelLoadError(str(exc)) from exc
    path = folder / (config.file or cls.default_file)
    if not path.exists() and not config.file:
        path = next(
            (folder / f for f in getattr(cls, "other_files", ()) if (folder / f).exists()), path
        )
    if not path.exists():
        raise ModelLoadError(f"missing model file {path}")
    declared = (
        [t.model_copy(update={"shape": config.batch_shape(t)}) for t in config.inputs]
        if config.inputs
        else None,
        [t.model_copy(update={"shape": config.batch_shape(t)}) for t in config.outputs]
        if config.outputs
        else None,
    )
    options = LoadOptions(
        path=path,
        instances=config.instances,
        threads=max(1, cpu_count() // config.instances),
        parameters=config.parameters,
        device=config.device,
        declared_inputs=declared[0],
        declared_outputs=declared[1],
        python=config.python,
        timeout_s=config.timeout_s
        or (
            config.batching.timeout_us / 1e6
            if config.batching and config.batching.timeout_us
            else None
        ),
    )
    try:
        engine = cls(options)
    except CinferError as exc:
        raise ModelLoadError(str(exc)) from exc
    except Exception as exc:
        raise ModelLoadError(f"{config.engine} cannot load {path}: {exc}") from exc
    try:
        inputs, outputs = signature.resolve(config, engine.inputs, engine.outputs)
        effective = config.model_copy(
            update={"inputs": inputs, "outputs": outputs, "device": engine.device}
        )
        _warm_up(engine, effective, config.instances)
    except BaseException:
        engine.close()
        raise
    return engine, effective


def warmup_inputs(config: ModelConfig) -> dict[str, np.ndarray]:
    """Zeros (or one-byte strings) of the declared shapes, -1 dims and the batch dim as 1."""
    arrays = {}
    for spec in config.inputs or ():
        shape = tuple(1 if d == -1 else d for d in config.batch_shape(spec))
        if spec.datatype == "BYTES":
            arrays[spec.name] = np.full(shape, b"0", dtype=object)
        else:
            arrays[spec.name] = np.zeros(shape, dtype=NUMPY[spec.datatype])
    return arrays


def _warm_up(engine: Engine, config: ModelConfig, instances: int) -> None:
    inputs = warmup_inputs(config)
    names = [t.name for t in config.outputs or ()]
    tolerated = getattr(engine, "tolerated_warm_up", ())
    for instance in range(instances):
        try:
            engine.run(instance, inputs, names)
        except tolerated as exc:
            log.warning("warm-up inference on zeros: %s (the model is loaded anyway)", exc)
        except Exception as exc:
            raise ModelLoadError(f"warm-up inference failed: {exc}") from exc
