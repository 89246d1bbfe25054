"""Watch mode: file events in the repository become "this model changed", once it settles.

`watchfiles.awatch` (inotify on Linux, in a thread) reports batches of changed paths. Each path
is mapped to its model (the first folder under the repository); every event restarts that
model's settle timer, and the model is reconciled only once its folder has been quiet for
``[repository] settle_ms``, so a ``cp -r`` or ``git pull`` in progress is never loaded
half-way. Models settle independently: a copy into one folder never delays another.

Ignored: anything under a hidden entry (``.git/``, ``.m.tmp/`` used for atomic publish), and
editor swap and backup files (``*.swp``, ``*~``, ``.#*``, vim's ``4913`` probe).

A failed reconcile never stops the watcher (Triton's poll mode does, triton-inference-server
issue #6534); if the watch itself fails (the folder vanished, inotify limits), it is logged and
restarted, and every model is checked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import watchfiles

from .errors import ConfigError
from .repository import is_model_name, list_models

log = logging.getLogger("cinfer")

#: Editor files: vim swap (.swp, .swo, ...), backups (~), emacs locks (.#), vim's 4913 probe.
EDITOR_FILES = re.compile(r"(\.sw[a-px]$)|(~$)|(^\.#)|(^4913$)")

#: How long to wait before watching again after the watch itself failed.
RESTART_DELAY_S = 1.0

OnChange = Callable[[str, float], Awaitable[None]]


def model_of(root: Path, path: str) -> str | None:
    """The model a changed path belongs to, or None when the change does not count."""
    try:
        parts = Path(path).relative_to(root).parts
    except ValueError:
        return None
    if not parts or any(part.startswith(".") for part in parts):
        return None
    if EDITOR_FILES.search(parts[-1]) or not is_model_name(parts[0]):
        return None
    return parts[0]


class Watcher:
    """Calls `on_change(model, at)` for each model whose folder changed and then settled;
    `at` is the loop time of the last event seen for it. `known()` names the models loaded
    now: after a failed watch they are checked again along with the folders on disk."""

    def __init__(
        self,
        root: Path,
        settle_ms: int,
        on_change: OnChange,
        known: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.path = root
        """The repository as configured (it may be a symlink that is swapped)."""
        self.root = root.resolve()
        """The folder watched now: `path` resolved when the watch (re)started."""
        self.settle = settle_ms / 1000
        self._on_change = on_change
        self._known = known
        self._last: dict[str, float] = {}
        self._settling: dict[str, asyncio.Task[None]] = {}
        self._reconciling: set[str] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resync: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching (on the running loop). The watch is set up when the task first
        runs, so it sees every change made after tasks created later start running."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cinfer-watcher")

    async def stop(self) -> None:
        """Stop watching; drop the timers still settling, let a reconcile under way finish."""
        self._stop.set()
        if self._task is not None:
            await self._task
        if self._resync is not None:
            await self._resync
        for name, task in list(self._settling.items()):
            if name not in self._reconciling:
                task.cancel()
        await asyncio.gather(*self._settling.values(), return_exceptions=True)

    def touch(self, names: Iterable[str]) -> None:
        """Record a change to each of `names` now and (re)start its settle timer."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for name in names:
            self._last[name] = now
            if name not in self._settling and not self._stop.is_set():
                task = loop.create_task(self._settle(name), name=f"cinfer-settle-{name}")
                self._settling[name] = task

    # -- internals ------------------------------------------------------------------------

    async def _run(self) -> None:
        # awatch groups events for at most `debounce` ms; keep that well under settle_ms so
        # a folder still being written re-arms its timer before the timer runs out.
        debounce = max(50, min(200, int(self.settle * 1000) // 4))
        failed: str | None = None
        while not self._stop.is_set():
            try:
                # Resolved again on every (re)start: a symlinked repository swapped to a new
                # target (git-sync, ConfigMap volumes) is followed once the old one is gone.
                self.root = self.path.resolve()
                root = str(self.root)
                if failed is not None:
                    # Changes made while the watch was down were missed: check everything,
                    # from a task that runs once the new watch below is set up.
                    self._resync = asyncio.create_task(self._check_all())
                async for changes in watchfiles.awatch(
                    self.root,
                    watch_filter=None,
                    debounce=debounce,
                    step=50,
                    stop_event=self._stop,
                ):
                    failed = None
                    if (watchfiles.Change.deleted, root) in changes:
                        raise FileNotFoundError(f"model repository {root} was removed")
                    self.touch({name for _, path in changes if (name := model_of(self.root, path))})
            except Exception as exc:
                if failed != str(exc):  # once per outage, not once per retry
                    log.error(
                        "watching %s failed, retrying every %.0fs: %s",
                        self.root,
                        RESTART_DELAY_S,
                        exc,
                    )
                failed = str(exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), RESTART_DELAY_S)

    async def _check_all(self) -> None:
        try:
            names = await asyncio.to_thread(list_models, self.path)
        except ConfigError:
            names = []  # still missing: the watch fails too and is retried
        else:
            log.info("watching %s again; checking every model", self.root)
        self.touch({*names, *self._known()})

    async def _settle(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                quiet = loop.time() - self._last[name]
                if quiet < self.settle:
                    await asyncio.sleep(self.settle - quiet)
                    continue
                at = self._last[name]
                self._reconciling.add(name)
                try:
                    await self._on_change(name, at)
                except Exception:
                    log.exception("model %s: handling a change failed", name)
                finally:
                    self._reconciling.discard(name)
                if self._last[name] == at or self._stop.is_set():
                    del self._last[name]
                    return  # nothing changed while it was reconciled
        finally:
            del self._settling[name]
