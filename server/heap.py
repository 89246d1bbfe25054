"""The garbage collector, tuned for a server's heap (docs/performance.md, "The garbage
collector").

CPython's cyclic collector runs a young collection every 700 net new container objects, and
now and then a full one that walks every object the process holds. A server holds hundreds of
thousands that never die (modules, the engines' Python side, pydantic's schemas, the route
table), and a full walk of them took 30-40 ms on these machines: every request in flight
waited that long, several times a second under load, because each request's own objects
(its coroutines, scope, futures) kept being promoted into the old generation while still
alive. Two changes take that away:

- `settle` freezes what the process holds once it is loaded (``gc.freeze``): a full
  collection walks only what came after. It runs after the start-up load and after each
  model change (a load, a reload, an unload), unfreezing and collecting first, so garbage
  that a change left in cycles is still collected.
- A young generation of `YOUNG` objects instead of 700: the objects of requests in flight are
  rarely alive when it fills, so they are freed by reference counting instead of promoted.

`Collector` also counts the collections and the time they held the event loop, for the
``cinfer_gc_*`` metrics. `give_back_freed_memory` hands what an unloaded engine freed back to
the operating system.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("cinfer")

#: Net new container objects between two young collections (CPython's default: 700).
YOUNG = 10_000

GENERATIONS = (0, 1, 2)


class Collector:
    """The process's garbage-collector policy, installed by the server (not by embedders or
    tests that build an app in process)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        """Collections per generation since `install`."""
        self.pause_seconds = [0.0, 0.0, 0.0]
        """Time spent in them, per generation: time no request was served."""
        self._started = 0.0
        self._previous: tuple[int, int, int] | None = None

    def install(self) -> None:
        self._previous = gc.get_threshold()
        gc.set_threshold(YOUNG, *self._previous[1:])
        gc.callbacks.append(self._observe)

    def uninstall(self) -> None:
        if self._observe in gc.callbacks:
            gc.callbacks.remove(self._observe)
        if self._previous is not None:
            gc.set_threshold(*self._previous)
            self._previous = None
        gc.unfreeze()

    def settle(self) -> None:
        """Collect everything, then freeze what is left: it is what the server keeps."""
        started = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        log.debug(
            "garbage collector: %d objects frozen in %.1f ms",
            gc.get_freeze_count(),
            (time.perf_counter() - started) * 1000,
        )

    @property
    def frozen(self) -> int:
        """Objects the collector no longer walks."""
        return gc.get_freeze_count()

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.collections[generation] += 1
        self.pause_seconds[generation] += time.perf_counter() - self._started


def give_back_freed_memory() -> None:
    """Blocking: return the heap's free memory to the OS (glibc's malloc_trim).

    glibc keeps freed memory in its per-thread arenas; a model loaded and unloaded again and
    again would otherwise leave the RSS at its high-water mark. See "Live repository" in
    docs/performance.md for the measurements.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    return trim


_malloc_trim = _libc_malloc_trim()
