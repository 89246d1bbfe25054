"""Keeping the GIL-bound threads on one core.

The event loop and the engine threads hand the GIL to each other for every request. When the
kernel runs them on two cores, each hand-off is a cross-core wake-up (an inter-processor
interrupt, expensive on virtual machines) and the threads spend more time waking each other
than working. Only one of them can run Python at a time anyway, so the real server pins the
event loop and the threads that call engines to one core, the "Python core", and leaves the
engines' own compute threads (onnxruntime's intra-op pool, OpenVINO's streams, a GPU) free on
every core. On the 2-core benchmark machine this took `tiny` at 32 connections from about 3.7k
to 5.9k requests/s and `mlp` binary at 32 from 3.0k to 3.3k (docs/performance.md).

Threads inherit the affinity of the thread that starts them, so a thread that must not be
pinned (the one that creates engine sessions, whose compute threads are spawned there) calls
`release()` first. Off Linux, or on one CPU, everything here does nothing.
"""

from __future__ import annotations

import os

#: The CPUs this process may use, read before anything is pinned.
ALLOWED: frozenset[int] = frozenset(
    os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else ()
)


def python_core() -> int | None:
    """The core for the GIL-bound threads (the highest allowed: CPU 0 takes more interrupts),
    or None when there is nothing to gain (one CPU, or no affinity control)."""
    if len(ALLOWED) < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    return max(ALLOWED)


def pin(core: int | None) -> None:
    """Pin the calling thread to `core` (no-op for None)."""
    if core is not None:
        os.sched_setaffinity(0, {core})


def release() -> None:
    """Let the calling thread (and the threads it starts from now on) use every allowed CPU."""
    if len(ALLOWED) > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, ALLOWED)
