"""Where image files are decoded: threads for small files, processes for large ones.

Both run on the cores beside the event loop's (every core where the loop is not pinned) at a
lower scheduling priority (`NICE`), so an image load takes what the event loop and the
engines leave.

Small files (under `LARGE` bytes: thumbnails, MNIST digits) are decoded in a thread pool:
handing a file to another process would cost more than decoding it. Large files (photos)
go to a pool of processes. Pillow holds the GIL between its C calls (opening the file,
each step of the preprocessing), and a photo's dozen of those hand-offs, in a process
that also answers requests, took a quarter of another model's throughput in
docs/performance.md ("Images in, labels out"); in a process of its own, decoding never
waits for the event loop nor makes it wait. It also keeps a decoder that crashes on a
hostile file away from the server: the pool is started again and the request retried once,
and a file that stops the decoder twice is a 400.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from . import affinity
from .errors import InvalidRequest

T = TypeVar("T")

log = logging.getLogger("cinfer")

NICE = 19
"""How much lower the decoders' scheduling priority is (Linux nice)."""
LARGE = 64 * 1024
"""Files of at least this many bytes are decoded in the decoding processes."""

_threads: tuple[concurrent.futures.ThreadPoolExecutor, int] | None = None
_processes: Processes | None = None
_lock = threading.Lock()


def width() -> int:
    """How many decoders of each kind: the cores beside the event loop's."""
    return len(affinity.elsewhere()) or os.cpu_count() or 1


def decoding_threads() -> tuple[concurrent.futures.ThreadPoolExecutor, int]:
    """The decoding threads, and how many there are."""
    global _threads
    with _lock:
        if _threads is None:
            pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=width(), thread_name_prefix="cinfer-image", initializer=_thread
            )
            _threads = (pool, width())
        return _threads


def _thread() -> None:
    affinity.move_elsewhere()
    with contextlib.suppress(OSError, AttributeError):  # Linux: a thread has its own nice
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)


def decoding_processes() -> Processes:
    """The decoding processes (started on first use, or by `start_processes`)."""
    global _processes
    with _lock:
        if _processes is None:
            _processes = Processes(width())
        return _processes


def start_processes() -> None:
    """Start the decoding processes now (a version with image inputs is loading), so that
    the first large image does not wait for them."""
    decoding_processes().start()


class Processes:
    """A pool of decoding processes, started again when one of them dies."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._pool = self._new()

    def _new(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.width,
            # Not fork: the server has threads (and engines) a forked child would inherit.
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_process,
            initargs=(sorted(affinity.elsewhere()) if affinity.CAN_PIN else None, NICE),
        )

    def start(self) -> None:
        for _ in range(self.width):
            self._pool.submit(os.getpid)

    def pids(self) -> list[int]:
        """The processes' ids (for the tests and the dashboard)."""
        processes = self._pool._processes or {}
        return sorted(p.pid for p in processes.values() if p.pid is not None)

    async def run(self, work: Callable[..., T], *args: object, files: str) -> T:
        """`work(*args)` in one of the processes (`work` a module-level function, `args`
        picklable); `files` names what it decodes, for the 400 when the process dies on it
        twice."""
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            pool = self._pool
            try:
                return await loop.run_in_executor(pool, work, *args)
            except BrokenProcessPool:
                with _lock:
                    if self._pool is pool:  # the first request to see it starts a new pool
                        log.warning("an image decoding process stopped: starting new ones")
                        pool.shutdown(wait=False, cancel_futures=True)
                        self._pool = self._new()
                if attempt == 2:
                    raise InvalidRequest(
                        f"{files}: the image decoder stopped while reading the file, twice: "
                        "is it a valid image?"
                    ) from None
        raise AssertionError("unreachable")

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def shutdown() -> None:
    """Stop the decoding threads and processes (the server is stopping)."""
    global _threads, _processes
    with _lock:
        threads, processes, _threads, _processes = _threads, _processes, None, None
    if threads is not None:
        threads[0].shutdown(wait=False, cancel_futures=True)
    if processes is not None:
        processes.shutdown()


def _process(cpus: list[int] | None, nice: int) -> None:
    """A decoding process starts: off the event loop's core, lower priority, and deaf to the
    Ctrl-C the terminal sends the whole process group (the server stops it itself)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cpus:
        os.sched_setaffinity(0, cpus)
    with contextlib.suppress(OSError, AttributeError):
        os.nice(nice)
