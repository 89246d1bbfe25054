"""From what is on disk to what is loaded, one model at a time.

`reconcile(name)` compares one model folder (model.toml and the versions its version_policy
selects) with what is loaded, and applies the difference:

- a version that is not loaded, failed before, or whose files changed is loaded and warmed up
  beside the serving one, and routed to only once READY; the one it replaces drains, unloads;
- a version whose model.toml changed only in `instances`, `[batching]` or `description` is
  resized / reconfigured in place: same pool, same engine, the model file is not read again;
- versions the policy no longer selects, and models whose folder is gone, stop taking new
  requests, finish the ones they have, and unload.

A load that fails never replaces what serves: the failed version is UNAVAILABLE with its reason
while the old one keeps serving, and the next change to the folder tries again. Changes to one
model are serialised by a per-model lock; different models change concurrently. Disk reads,
engine loads and pool shutdowns run in threads, so the event loop keeps serving requests.

Swaps lose no request because the infer path picks a version (`Model.get`) and submits to
its pool without an `await` in between: a request is either queued on the old pool before
`model.versions` is replaced (and the old version drains it before closing) or routed to the
new one. Keep it that way.

Every state change is logged on one line: model, version, old -> new state, duration, reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import pipelines
from .errors import ConfigError, ModelLoadError, NotFound
from .heap import Collector, give_back_freed_memory
from .images import DEFAULT_MAX_PIXELS
from .model_config import ModelConfig
from .models import Model, ModelState, ModelVersion, load_version
from .repository import Fingerprint, ModelSource, is_model_name, list_models, read_versions
from .scheduler import Completions, InstancePool

log = logging.getLogger("cinfer")

#: Seconds after the last model change before the heap is settled (heap.py).
SETTLE_DELAY = 1.0
#: model.toml keys a loaded version takes on without reloading its model file.
IN_PLACE = {"instances", "batching", "description"}


@dataclass
class Outcome:
    """What one reconcile of a model did (the load API reports it)."""

    failures: list[str] = field(default_factory=list)
    """Why a version, or model.toml, could not be loaded."""
    serving: list[int] = field(default_factory=list)
    """The READY versions after the reconcile."""


def log_state(
    name: str,
    version: int | None,
    old: ModelState,
    new: ModelState,
    seconds: float | None = None,
    reason: str = "",
) -> None:
    """The one log line per state change."""
    where = f"model {name}" if version is None else f"model {name} version {version}"
    took = "" if seconds is None else f" in {seconds:.2f}s"
    why = f": {reason}" if reason else ""
    failed = new is ModelState.UNAVAILABLE and old is ModelState.LOADING
    log.log(
        logging.ERROR if failed else logging.INFO,
        "%s: %s -> %s%s%s",
        where,
        old.value,
        new.value,
        took,
        why,
    )


class Reconciler:
    """Owns the loaded models; every change goes through here, serialised per model."""

    def __init__(
        self,
        root: Path,
        python_core: int | None = None,
        heap: Collector | None = None,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        instances: int | None = None,
    ) -> None:
        self.root = root
        self.instances = instances
        """Every model's instance count over its model.toml's (`cinfer batch --instances`)."""
        self.max_image_pixels = max_image_pixels
        """What one image sent to an image input may have ([server] max_image_pixels)."""
        self.python_core = python_core
        """The core the event loop is pinned to, shared by engine threads (affinity.py)."""
        self.heap = heap
        """The server's garbage-collector policy (heap.py): settled after model changes."""
        self._settle: asyncio.TimerHandle | None = None
        self._closing = False
        self.models: dict[str, Model] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._completions: Completions | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self.retired: list[Callable[[ModelVersion], None]] = []  # told of each retired version
        self._unloaded: dict[str, float] = {}
        """Models unloaded through the API -> loop time of the unload (they stay unloaded
        until their folder changes after that, or load is called)."""

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

    # -- what changes the loaded state -----------------------------------------------------

    async def load_all(self) -> None:
        """Load every model folder in the repository, concurrently (start-up)."""
        names = await asyncio.to_thread(list_models, self.root)
        await asyncio.gather(*(self.reconcile(name) for name in names))

    async def reconcile(self, name: str) -> Outcome:
        """Make what is loaded for `name` match its folder (see the module docstring)."""
        async with self._lock(name):
            outcome = await self._reconcile(name)
        pipelines.refresh(self.models)
        return outcome

    async def load(self, name: str) -> Outcome:
        """The load API: re-read the folder and apply it; ends an explicit unload."""
        async with self._lock(name):
            self._unloaded.pop(name, None)
            outcome = await self._reconcile(name)
        pipelines.refresh(self.models)
        return outcome

    async def changed(self, name: str, at: float) -> None:
        """The watcher: the folder of `name` changed (last event at loop time `at`) and has
        been quiet since. Never raises: one failure must not stop the watcher."""
        async with self._lock(name):
            held = self._unloaded.get(name)
            if held is not None:
                if at < held:
                    return  # the change came before the explicit unload: it holds
                del self._unloaded[name]
            try:
                await self._reconcile(name)
            except Exception:
                log.exception("model %s: reconciling the folder failed unexpectedly", name)
        pipelines.refresh(self.models)

    async def unload(self, name: str) -> None:
        """The unload API: stop routing to a model, let its requests finish, free its engines.

        It stays unloaded until load is called or, in watch mode, its folder changes again."""
        async with self._lock(name):
            on_disk = is_model_name(name) and await asyncio.to_thread((self.root / name).is_dir)
            if name not in self.models and not on_disk:
                raise NotFound(f"unknown model '{name}'")
            self._unloaded[name] = self.loop.time()
            if name in self.models:
                self._remove(name, "unloaded through the API")
        pipelines.refresh(self.models)

    async def close(self) -> None:
        """Unload everything and wait for it (shutdown)."""
        self._closing = True
        if self._settle is not None:
            self._settle.cancel()
            self._settle = None
        for name in list(self.models):
            async with self._lock(name):
                if name in self.models:
                    self._remove(name, "server shutting down")
        while self._retiring:
            await asyncio.gather(*self._retiring)

    # -- what the API reports --------------------------------------------------------------

    async def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model on disk or loaded, each version with its state and reason."""
        try:
            on_disk = await asyncio.to_thread(list_models, self.root)
        except ConfigError as exc:
            log.error("repository index: %s", exc)
            on_disk = []
        entries: list[dict[str, str]] = []
        for name in sorted({*on_disk, *self.models}):
            model = self.models.get(name)
            if model is None:
                reason = "unloaded" if name in self._unloaded else "not loaded"
                entries.append(
                    {"name": name, "state": ModelState.UNAVAILABLE.value, "reason": reason}
                )
                continue
            # A version reloading beside the serving one shows as the serving one.
            versions = {**model.loading, **model.versions}
            if not versions:
                state = ModelState.UNAVAILABLE if model.reason else ModelState.LOADING
                entries.append({"name": name, "state": state.value, "reason": model.reason})
            for number in sorted(versions):
                version = versions[number]
                entries.append(
                    {
                        "name": name,
                        "version": str(number),
                        "state": version.state.value,
                        "reason": version.reason or model.reason,
                    }
                )
        if ready_only:
            entries = [e for e in entries if e["state"] == ModelState.READY.value]
        return entries

    # -- internals -------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def _reconcile(self, name: str) -> Outcome:
        model = self.models.get(name)
        folder = self.root / name
        if not await asyncio.to_thread(folder.is_dir):
            if model is not None:
                self._remove(name, f"folder {folder} was removed")
            return Outcome()
        if model is None:
            model = self.models[name] = Model(name)
        started = time.perf_counter()
        try:
            source, prints = await asyncio.to_thread(read_versions, self.root, name, self.instances)
        except (ConfigError, OSError) as exc:
            return self._unreadable(model, str(exc), time.perf_counter() - started)
        model.reason = ""
        model.description = source.config.description
        if not source.config.enabled:
            return self._unpublish(model, source)

        kept: dict[int, ModelVersion] = {}
        to_load: list[int] = []
        for number in source.versions:
            current = model.versions.get(number)
            if (
                current is None
                or not current.ready
                or current.declared is None
                or current.fingerprint != prints[number]
            ):
                to_load.append(number)
            elif current.declared == source.config:
                current.reason = ""
                kept[number] = current
            elif _only_in_place(current.declared, source.config) and await self._reconfigure(
                current, source.config
            ):
                kept[number] = current
            else:
                to_load.append(number)

        loaded = await asyncio.gather(
            *(self._load_version(model, source, n, prints[n]) for n in to_load)
        )
        outcome = Outcome()
        routed = dict(kept)
        for version in loaded:
            number = version.version
            current = model.versions.get(number)
            if not version.ready:
                outcome.failures.append(f"version {number}: {version.reason}")
            if version.ready or current is None or not current.ready:
                routed[number] = version
            else:
                # The same version failed to reload: the previous load keeps serving.
                current.reason = f"reload failed, still serving the previous load: {version.reason}"
                routed[number] = current
        if not any(v.ready for v in routed.values()):
            # Nothing the policy selects is READY (say, a broken new version): what serves
            # now keeps serving (a failed load never takes down a working version).
            for number, version in model.versions.items():
                if number not in routed and version.ready:
                    version.reason = "still serving: the versions version_policy selects failed"
                    routed[number] = version
        retired = [v for v in model.versions.values() if routed.get(v.version) is not v]
        model.versions = routed
        for version in retired:
            why = "replaced by a new load" if version.version in routed else "no longer selected"
            self._retire(version, why)
        outcome.serving = sorted(n for n, v in routed.items() if v.ready)
        if to_load:  # a retired version settles the heap itself, once it is unloaded
            self._heap_changed()
        return outcome

    def _unpublish(self, model: Model, source: ModelSource) -> Outcome:
        """``enabled = false``: retire every version; the model stays listed, with why."""
        model.reason = f"unpublished: enabled = false in {source.folder / 'model.toml'}"
        retired = list(model.versions.values())
        if retired:
            log.info("model %s: unpublished (enabled = false), retiring its versions", model.name)
        model.versions = {}
        for version in retired:
            self._retire(version, "unpublished")  # each settles the heap once unloaded
        return Outcome()

    def _unreadable(self, model: Model, reason: str, seconds: float) -> Outcome:
        """model.toml (or the folder) cannot be used: keep serving what serves."""
        model.reason = reason
        serving = sorted(n for n, v in model.versions.items() if v.ready)
        if serving:
            for number in serving:
                model.versions[
                    number
                ].reason = f"reload failed, still serving the previous load: {reason}"
            log.error(
                "model %s: reload failed after %.2fs, still serving version%s %s: %s",
                model.name,
                seconds,
                "" if len(serving) == 1 else "s",
                ", ".join(map(str, serving)),
                reason,
            )
        else:
            log_state(model.name, None, ModelState.LOADING, ModelState.UNAVAILABLE, seconds, reason)
        return Outcome([reason], serving)

    async def _reconfigure(self, version: ModelVersion, declared: ModelConfig) -> bool:
        """Apply an instances / batching / description change to a READY version in place."""
        pool = version.pool
        assert pool is not None and version.declared is not None
        started = time.perf_counter()
        before = version.declared.instances
        effective = version.config.model_copy(
            update={key: getattr(declared, key) for key in IN_PLACE}
        )
        try:
            await asyncio.to_thread(pool.resize, declared.instances)
        except Exception as exc:
            log.error(
                "model %s version %d: resizing %d -> %d instances in place failed, "
                "reloading it instead: %s",
                version.name,
                version.version,
                before,
                declared.instances,
                exc,
            )
            return False
        pool.configure(effective)
        version.config = effective
        version.declared = declared
        version.reason = ""
        log_state(
            version.name,
            version.version,
            ModelState.READY,
            ModelState.READY,
            time.perf_counter() - started,
            f"reconfigured in place, model file not reloaded ({before} -> {declared.instances} "
            f"instance{'' if declared.instances == 1 else 's'}, "
            f"batching {'on' if declared.batching else 'off'})",
        )
        return True

    async def _load_version(
        self, model: Model, source: ModelSource, number: int, prints: Fingerprint
    ) -> ModelVersion:
        placeholder = ModelVersion(model.name, number, source.versions[number], source.config)
        model.loading[number] = placeholder
        log_state(model.name, number, ModelState.UNKNOWN, ModelState.LOADING)
        started = time.perf_counter()
        try:
            assert self._completions is not None
            version = await asyncio.to_thread(
                load_version, source, number, self._completions, self.loop, self.python_core,
                self.max_image_pixels,
            )  # fmt: skip
        except ModelLoadError as exc:
            placeholder.state = ModelState.UNAVAILABLE
            placeholder.reason = str(exc)
            version = placeholder
        except Exception as exc:
            log.exception("model %s version %d: unexpected load failure", model.name, number)
            placeholder.state = ModelState.UNAVAILABLE
            placeholder.reason = f"internal error while loading: {exc}"
            version = placeholder
        finally:
            model.loading.pop(number, None)
        version.declared = source.config
        version.fingerprint = prints
        config = source.config
        detail = (
            f"{config.engine} on {version.config.device}, "
            f"{config.instances} instance{'' if config.instances == 1 else 's'}"
            if version.ready
            else version.reason
        )
        took = time.perf_counter() - started
        log_state(model.name, number, ModelState.LOADING, version.state, took, detail)
        return version

    def _remove(self, name: str, reason: str) -> None:
        """Stop routing to a model now; its versions drain and unload in the background."""
        model = self.models.pop(name)
        for version in model.versions.values():
            self._retire(version, reason)
        for version in model.loading.values():
            version.state = ModelState.UNAVAILABLE

    def _retire(self, version: ModelVersion, reason: str) -> None:
        for forget in self.retired:
            forget(version)
        if version.pool is None:
            version.state = ModelState.UNAVAILABLE
            return
        task = self.loop.create_task(self._unload_version(version, reason))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _unload_version(self, version: ModelVersion, reason: str) -> None:
        old = version.state
        version.state = ModelState.UNLOADING
        log_state(version.name, version.version, old, ModelState.UNLOADING, None, reason)
        started = time.perf_counter()
        pool = version.pool
        assert pool is not None
        await pool.drain()
        try:
            await asyncio.to_thread(_close, pool)
        except Exception:
            log.exception(
                "model %s version %d: closing its engine failed", version.name, version.version
            )
        version.pool = None
        version.state = ModelState.UNAVAILABLE
        version.reason = "unloaded"
        log_state(
            version.name, version.version, ModelState.UNLOADING, ModelState.UNAVAILABLE,
            time.perf_counter() - started, f"unloaded, engines closed ({reason})",
        )  # fmt: skip
        self._heap_changed()

    def _heap_changed(self) -> None:
        """Settle the heap `SETTLE_DELAY` after the last model change: one full collection
        for a start-up load or a `git pull` that changes many models, not one per model."""
        if self.heap is None or self._closing:
            return
        if self._settle is not None:
            self._settle.cancel()
        self._settle = self.loop.call_later(SETTLE_DELAY, self._settled)

    def _settled(self) -> None:
        self._settle = None
        assert self.heap is not None
        self.heap.settle()


def _close(pool: InstancePool) -> None:
    """Blocking: close a pool, then hand the memory its engine freed back to the OS."""
    pool.close()
    give_back_freed_memory()


def _only_in_place(old: ModelConfig, new: ModelConfig) -> bool:
    """True when `new` differs from `old` only in keys a loaded version can take in place."""
    return old.model_copy(update={key: getattr(new, key) for key in IN_PLACE}) == new
