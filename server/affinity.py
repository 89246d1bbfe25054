"""Keeping the GIL-bound threads on one core.

The event loop and the engine threads hand the GIL to each other for every request. When the
kernel runs them on two cores, each hand-off is a cross-core wake-up (an inter-processor
interrupt, expensive on virtual machines) and the threads spend more time waking each other
than working. Only one of them can run Python at a time anyway, so the server pins the event
loop to one core, the "Python core", and an engine thread joins it while short requests
queue up behind it (scheduler.py has the rule); the engines' own compute threads
(onnxruntime's intra-op pool, OpenVINO's streams, a GPU) stay free on every core. The figures
are in docs/performance.md ("Thread placement").

Threads inherit the affinity of the thread that starts them, so a thread that creates engine
sessions or engine threads (a load, a resize) calls `release()` first. Off Linux, or on one
CPU, everything here does nothing.
"""

from __future__ import annotations

import os

#: The CPUs this process may use, read before anything is pinned.
ALLOWED: frozenset[int] = frozenset(
    os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else ()
)


#: Whether pinning can gain anything: two or more CPUs, and affinity control (Linux).
CAN_PIN = len(ALLOWED) > 1 and hasattr(os, "sched_setaffinity")


def python_core() -> int | None:
    """The core for the GIL-bound threads (the highest allowed: CPU 0 takes more interrupts),
    or None when there is nothing to gain."""
    return max(ALLOWED) if CAN_PIN else None


_pinned: int | None = None
"""The core the event loop was pinned to, once it is."""


def pin(core: int | None) -> None:
    """Pin the calling thread to `core` (no-op for None)."""
    global _pinned
    if core is not None:
        os.sched_setaffinity(0, {core})
        _pinned = core


def elsewhere() -> frozenset[int]:
    """The CPUs for work that must not take the event loop's core (decoding images): every
    allowed CPU but the pinned one, or every allowed one when nothing is pinned."""
    others = ALLOWED - {_pinned} if _pinned is not None else ALLOWED
    return others or ALLOWED


def move_elsewhere() -> None:
    """Run the calling thread on `elsewhere()` (a thread pool's initializer)."""
    if CAN_PIN:
        os.sched_setaffinity(0, elsewhere())


def release() -> None:
    """Let the calling thread (and the threads it starts from now on) use every allowed CPU."""
    if CAN_PIN:
        os.sched_setaffinity(0, ALLOWED)
