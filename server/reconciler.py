"""From what is on disk to what is loaded, one model at a time.

`load(name)` re-reads one model folder, builds the versions its policy selects beside the
ones serving, and swaps only when they are READY; versions no longer selected stop taking new
requests, drain and unload. A load that fails never replaces a READY version: the failed one
shows as UNAVAILABLE with its reason while the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from .errors import ConfigError, ModelLoadError, NotFound
from .models import Model, ModelState, ModelVersion, load_version
from .repository import ModelSource, list_models, read_model
from .scheduler import Completions

log = logging.getLogger("cinfer")


class Reconciler:
    """Owns the loaded models; every change goes through here, serialised per model."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models: dict[str, Model] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._completions: Completions | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the event loop that requests and results run on."""
        self._loop = loop
        self._completions = Completions(loop)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "Reconciler.start() first"
        return self._loop

    def get(self, name: str) -> Model:
        try:
            return self.models[name]
        except KeyError:
            raise NotFound(f"unknown model '{name}'") from None

    async def load_all(self) -> None:
        """Load every model folder in the repository, concurrently."""
        names = await asyncio.to_thread(list_models, self.root)
        await asyncio.gather(*(self.load(name) for name in names))

    async def load(self, name: str) -> Model:
        """(Re)load one model from its folder; swap in what became READY."""
        async with self._lock(name):
            return await self._load(name)

    async def unload(self, name: str) -> None:
        """Stop routing to a model, let its requests finish, then free its engines."""
        async with self._lock(name):
            model = self.models.pop(name, None)
            if model is None:
                raise NotFound(f"unknown model '{name}'")
            for version in model.versions.values():
                self._retire(version)
            for version in model.loading.values():
                version.state = ModelState.UNAVAILABLE

    async def close(self) -> None:
        """Unload everything and wait for it (shutdown)."""
        for name in list(self.models):
            await self.unload(name)
        if self._retiring:
            await asyncio.gather(*self._retiring)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model and version with its state and reason (the repository extension)."""
        entries: list[dict[str, str]] = []
        for name in sorted(self.models):
            model = self.models[name]
            versions = {**model.versions, **model.loading}
            if not versions:
                entries.append(
                    {"name": name, "state": ModelState.UNAVAILABLE.value, "reason": model.reason}
                )
            for number in sorted(versions):
                version = versions[number]
                entries.append(
                    {
                        "name": name,
                        "version": str(number),
                        "state": version.state.value,
                        "reason": version.reason or (model.reason if not version.ready else ""),
                    }
                )
        if ready_only:
            entries = [e for e in entries if e["state"] == ModelState.READY.value]
        return entries

    # -- internals ------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def _load(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            model = self.models[name] = Model(name)
        try:
            source = await asyncio.to_thread(read_model, self.root, name)
        except ConfigError as exc:
            model.reason = str(exc)
            log.error("model %s: UNAVAILABLE: %s", name, exc)
            return model
        model.reason = ""
        model.description = source.config.description
        loaded = await asyncio.gather(
            *(self._load_version(model, source, number) for number in source.versions)
        )
        fresh = {v.version: v for v in loaded}
        serving = {n: v for n, v in model.versions.items() if v.ready}
        keep: dict[int, ModelVersion] = {}
        if not any(v.ready for v in fresh.values()):
            # Nothing new is READY: what serves now keeps serving (a failed load never
            # takes down a working version).
            keep = {n: v for n, v in serving.items() if n not in fresh or not fresh[n].ready}
        versions = {**keep, **fresh}
        for number, version in fresh.items():
            old = keep.get(number)
            if old is not None and not version.ready:
                # Same version number failed to reload: the old one serves, the reason shows.
                old.reason = f"reload failed, still serving the previous load: {version.reason}"
                versions[number] = old
        retired = [v for v in model.versions.values() if versions.get(v.version) is not v]
        model.versions = versions
        for version in retired:
            self._retire(version)
        return model

    async def _load_version(self, model: Model, source: ModelSource, number: int) -> ModelVersion:
        placeholder = ModelVersion(model.name, number, source.versions[number], source.config)
        model.loading[number] = placeholder
        log.info("model %s version %d: -> LOADING", model.name, number)
        started = time.perf_counter()
        try:
            assert self._completions is not None
            version = await asyncio.to_thread(
                load_version, source, number, self._completions, self.loop
            )
        except ModelLoadError as exc:
            placeholder.state = ModelState.UNAVAILABLE
            placeholder.reason = str(exc)
            log.error(
                "model %s version %d: LOADING -> UNAVAILABLE after %.2fs: %s",
                model.name,
                number,
                time.perf_counter() - started,
                exc,
            )
            version = placeholder
        except Exception as exc:
            log.exception("model %s version %d: unexpected load failure", model.name, number)
            placeholder.state = ModelState.UNAVAILABLE
            placeholder.reason = f"internal error while loading: {exc}"
            version = placeholder
        else:
            log.info(
                "model %s version %d: LOADING -> READY in %.2fs (%s on %s, %d instance%s)",
                model.name,
                number,
                version.load_seconds,
                source.config.engine,
                version.config.device,
                source.config.instances,
                "" if source.config.instances == 1 else "s",
            )
        finally:
            model.loading.pop(number, None)
        return version

    def _retire(self, version: ModelVersion) -> None:
        if version.pool is None:
            version.state = ModelState.UNAVAILABLE
            return
        task = self.loop.create_task(self._unload_version(version))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _unload_version(self, version: ModelVersion) -> None:
        old = version.state
        version.state = ModelState.UNLOADING
        log.info("model %s version %d: %s -> UNLOADING", version.name, version.version, old.value)
        started = time.perf_counter()
        pool = version.pool
        assert pool is not None
        await pool.drain()
        await asyncio.to_thread(pool.close)
        version.pool = None
        version.state = ModelState.UNAVAILABLE
        version.reason = "unloaded"
        log.info(
            "model %s version %d: UNLOADING -> UNAVAILABLE (unloaded) in %.2fs",
            version.name,
            version.version,
            time.perf_counter() - started,
        )
