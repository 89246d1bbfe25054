"""Instance pools: engine threads, their queue, dynamic batching, and the way results return.

The hand-off between the event loop and the engine threads decides this server's speed: a
bare `run_in_threadpool` per request costs two thread wake-ups and one loop wake-up per
request. Here both directions are amortised:

- requests go into one `queue.SimpleQueue` per version (C-implemented; a put wakes one waiting
  thread); an instance that is busy finds the next requests already queued and takes them
  without sleeping;
- results come back through `Completions`, shared by every pool on the loop: a thread appends
  to a deque and wakes the loop only when no wake-up is pending, so a loop wake-up delivers
  every result that finished in the meantime.

With ``[batching]``, a free instance takes what is queued (same non-batch shapes, up to
max_batch_size rows), runs it as one batch and splits the outputs back. With
max_queue_delay_us = 0 it never waits: a lone request runs at once, and under load batches form
by themselves while the instances are busy.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import affinity
from .counters import BatchStats, InstanceStats
from .engines import Engine
from .errors import CinferError, EngineError, Unavailable
from .model_config import ModelConfig
from .rows import concat, split, union

log = logging.getLogger("cinfer")

Outputs = dict[str, np.ndarray]
Result = tuple["Job", Outputs | None, BaseException | None]

#: Jobs found with an empty queue behind them before an engine thread leaves the loop's core.
CALM_JOBS = 64
#: Engine runs shorter than this (moving average) are dominated by the GIL hand-off, not by
#: compute: only then does an engine thread join the loop's core.
PIN_MAX_RUN_NS = 100_000

_STOP = object()  # one per worker: the worker that takes it finishes its batch and exits
_WAKE = object()  # nudges an idle worker to look at held-back jobs


class Job:
    """One request on its way through a pool."""

    __slots__ = ("enqueued", "future", "inputs", "key", "outputs", "pool", "rows")

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        rows: int,
        key: Any,
        future: asyncio.Future[Outputs],
        pool: InstancePool,
    ) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.rows = rows
        self.key = key
        self.future = future
        self.pool = pool
        self.enqueued = time.perf_counter_ns()

    #: A job that continues on the engine thread once answered (chains.ChainJob) defines
    #: then(outputs), returning the result to deliver to the loop, or None for none yet.
    then: Any = None

    def finished(self) -> None:
        """On the loop, once the job's result is delivered."""
        self.pool._finished()


class Completions:
    """Carries results from engine threads to the event loop, one wake-up for many results."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._done: collections.deque[Result] = collections.deque()
        self._scheduled = False

    def put(self, job: Job, result: Outputs | None, error: BaseException | None) -> None:
        """Called from engine threads: one result."""
        self._done.append((job, result, error))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon_threadsafe(self._flush)

    def put_many(self, items: list[Result]) -> None:
        """Called from engine threads: the results of one batch."""
        self._done.extend(items)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        # Clear the flag before draining: a result appended after this line either is drained
        # below or schedules a new flush (see put()).
        self._scheduled = False
        done = self._done
        while done:
            job, result, error = done.popleft()
            job.finished()
            future = job.future
            if future.done():  # the client went away
                continue
            if error is None:
                future.set_result(result)  # type: ignore[arg-type]
            else:
                future.set_exception(error)


class InstancePool:
    """The engine instances of one loaded version, fed from one queue."""

    def __init__(
        self,
        label: str,
        engine: Engine,
        config: ModelConfig,
        completions: Completions,
        loop: asyncio.AbstractEventLoop,
        core: int | None = None,
    ) -> None:
        self.label = label
        self.engine = engine
        self._loop = loop
        self._completions = completions
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._held: collections.deque[Job] = collections.deque()
        self._workers: list[threading.Thread] = []
        self.stats: list[InstanceStats] = []
        self.pending = 0
        self._idle: asyncio.Event | None = None
        self._closed = False
        self._core = core
        """Pin the engine threads to this core (the event loop's; see affinity.py)."""
        self.configure(config)

    # -- configuration (event loop) -------------------------------------------------------

    def configure(self, config: ModelConfig) -> None:
        """Apply the scheduling part of a config (batching, queue limits); takes effect now."""
        self.config = config
        batching = config.batching
        self._batching = batching is not None
        self._max_rows = config.max_batch_size
        self._delay_ns = batching.max_queue_delay_us * 1000 if batching else 0
        self._preferred = frozenset(batching.preferred_batch_sizes) if batching else frozenset()
        self._max_queue = batching.max_queue_size if batching else 0
        self._timeout_ns = batching.timeout_us * 1000 if batching else 0

    def start(self, instances: int) -> None:
        while len(self.stats) < instances:
            self.stats.append(InstanceStats())
        self._workers = [
            threading.Thread(
                target=self._work, args=(i,), name=f"cinfer-{self.label}-{i}", daemon=True
            )
            for i in range(instances)
        ]
        for worker in self._workers:
            worker.start()

    @property
    def instances(self) -> int:
        return len(self._workers)

    def _stop_workers(self) -> None:
        """Blocking: each worker finishes its batch, takes one STOP and exits."""
        for _ in self._workers:
            self._queue.put(_STOP)
        for worker in self._workers:
            worker.join()
        self._workers = []

    def resize(self, instances: int) -> None:
        """Blocking (run it off the loop): change the instance count without reloading.

        The workers finish what they run, the engine grows or shrinks, new workers take over
        the queue; queued requests wait for the switch and none fails. When the engine cannot
        grow, the old instance count keeps serving and the error is raised.
        """
        running = len(self._workers)
        if instances == running:
            return
        # New sessions and workers inherit this thread's CPUs: the whole machine, never the
        # event loop's core (an executor thread started by the pinned loop has only that).
        affinity.release()
        self._stop_workers()
        try:
            self.engine.resize(instances)
        except BaseException:
            # A failed grow leaves the engine with at least the instances it had: keep
            # serving with those rather than leave the queue without workers.
            self.start(running)
            raise
        self.start(instances)

    async def drain(self) -> None:
        """Wait until every accepted request has been answered."""
        while self.pending:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def close(self) -> None:
        """Blocking: stop the workers, fail anything left, close the engine."""
        self._closed = True
        self._stop_workers()
        leftovers = list(self._held)
        self._held.clear()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Job):
                leftovers.append(item)
        if leftovers:
            error = Unavailable(f"model {self.label} was unloaded")
            self._completions.put_many([(job, None, error) for job in leftovers])
        self.engine.close()

    # -- requests (event loop) ------------------------------------------------------------

    def submit(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], rows: int
    ) -> asyncio.Future[Outputs]:
        """Queue one request; the future resolves on the loop with its outputs."""
        future: asyncio.Future[Outputs] = self._loop.create_future()
        key = (
            tuple((name, a.dtype, a.shape[1:]) for name, a in inputs.items())
            if self._batching
            else None
        )
        self.put(Job(inputs, outputs, rows, key, future, self))
        self.pending += 1
        return future

    def put(self, job: Job) -> None:
        """Queue `job` (from the loop, or an engine thread for a chain's next step)."""
        if self._closed:
            raise Unavailable(f"model {self.label} is unloading")
        if self._max_queue and self._queue.qsize() + len(self._held) >= self._max_queue:
            raise Unavailable(
                f"model {self.label}: queue full ({self._max_queue} requests waiting, "
                "[batching] max_queue_size)"
            )
        self._queue.put(job)

    def _finished(self) -> None:
        self.pending -= 1
        if not self.pending and self._idle is not None:
            self._idle.set()

    # -- engine threads -------------------------------------------------------------------

    def _take(self) -> Any:
        while True:
            if self._held:
                return self._held.popleft()
            item = self._queue.get()
            if item is not _WAKE:
                return item

    def _work(self, instance: int) -> None:
        stats = self.stats[instance]
        stopping = False
        core = self._core
        pinned = False
        calm = 0
        queue = self._queue
        while not stopping:
            job = self._take()
            if job is _STOP:
                break
            if core is not None:
                # Share the event loop's core while short requests queue up: the GIL changes
                # hands for each, and a same-core hand-off is cheap. Run free when requests
                # come one at a time (this thread can then start while the loop finishes its
                # own work) or when runs are long (this thread computes part of each run, and
                # must not take that from the loop's core).
                if queue.qsize() and stats.run_ns < PIN_MAX_RUN_NS:
                    calm = 0
                    if not pinned:
                        affinity.pin(core)
                        pinned = True
                elif pinned:
                    calm += 1
                    if calm >= CALM_JOBS or stats.run_ns >= PIN_MAX_RUN_NS:
                        affinity.release()
                        pinned = False
            if self._batching:
                batch, stopping = self._gather(job)
            else:
                batch = [job]
            self._execute(instance, batch, stats)

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """Take what is queued that fits with `first`; wait only within max_queue_delay_us."""
        batch = [first]
        rows, key, limit = first.rows, first.key, self._max_rows
        get, stopping = self._queue.get_nowait, False
        deadline = first.enqueued + self._delay_ns
        while rows < limit:
            try:
                job = self._held.popleft() if self._held else get()
            except queue.Empty:
                wait = deadline - time.perf_counter_ns()
                if wait <= 0 or rows in self._preferred:
                    break
                try:
                    job = self._queue.get(timeout=wait / 1e9)
                except queue.Empty:
                    break
            if job is _WAKE:
                continue
            if job is _STOP:
                stopping = True
                break
            if job.key != key or rows + job.rows > limit:
                self._held.appendleft(job)
                self._queue.put(_WAKE)  # let an idle instance take it now
                break
            batch.append(job)
            rows += job.rows
        if self._preferred and rows not in self._preferred and len(batch) > 1:
            batch = self._cut_to_preferred(batch)
        return batch, stopping

    def _cut_to_preferred(self, batch: list[Job]) -> list[Job]:
        """Like Triton: run the largest preferred size the queued requests can form."""
        total, cut = 0, 0
        for i, job in enumerate(batch):
            total += job.rows
            if total in self._preferred:
                cut = i + 1
        if cut:
            self._held.extendleft(reversed(batch[cut:]))
            self._queue.put(_WAKE)
            return batch[:cut]
        return batch

    def _execute(self, instance: int, batch: list[Job], stats: InstanceStats) -> None:
        # Runs with the GIL contended by the event loop: every line here is paid per batch,
        # so the single-request case takes the shortest path.
        start = time.perf_counter_ns()
        if self._timeout_ns or _any_cancelled(batch):
            batch = self._expire(batch, start)
            if not batch:
                return
        try:
            if len(batch) == 1:
                job = batch[0]
                rows = job.rows
                waited = start - job.enqueued
                stats.queue_ns += waited
                stats.queue_histogram.observe(waited)
                # Nothing to join: the request's arrays go to the engine as decoded, and its
                # outputs come back as the engine made them (no split). compute_input is
                # then what this thread spent on the request before the run; the request's
                # decoding and encoding are counted by DataPlane.exchange.
                ready = time.perf_counter_ns()
                outputs = self.engine.run(instance, job.inputs, job.outputs)
                ran = done = time.perf_counter_ns()
                results = None
            else:
                rows = 0
                for job in batch:
                    waited = start - job.enqueued
                    stats.queue_ns += waited
                    stats.queue_histogram.observe(waited)
                    rows += job.rows
                first = batch[0].inputs
                inputs = {n: concat([j.inputs[n] for j in batch]) for n in first}
                names = union(job.outputs for job in batch)
                ready = time.perf_counter_ns()
                outputs = self.engine.run(instance, inputs, names)
                ran = time.perf_counter_ns()
                results = split(batch, outputs, rows)
                done = time.perf_counter_ns()
        except Exception as exc:
            error = exc if isinstance(exc, CinferError) else EngineError(f"{self.label}: {exc}")
            if not isinstance(exc, CinferError) or isinstance(exc, EngineError):
                log.error("model %s: inference failed", self.label, exc_info=exc)
            stats.failures += len(batch)
            self._completions.put_many([(job, None, error) for job in batch])
            return
        # Count before answering: a client that reads the statistics after its response
        # must find its request in them.
        requests = len(batch)
        stats.executions += 1
        stats.inferences += rows
        stats.success += requests
        stats.compute_input_ns += (ready - start) * requests
        stats.compute_infer_ns += (ran - ready) * requests
        stats.compute_output_ns += (done - ran) * requests
        stats.last_inference_ms = time.time_ns() // 1_000_000
        stats.run_ns += (ran - ready - stats.run_ns) >> 3
        stats.batch_histogram.observe(rows)
        per_size = stats.batches.get(rows)
        if per_size is None:
            per_size = stats.batches[rows] = BatchStats()
        per_size.count += 1
        per_size.compute_input_ns += ready - start
        per_size.compute_infer_ns += ran - ready
        per_size.compute_output_ns += done - ran
        if results is None:
            if job.then is None:
                self._completions.put(job, outputs, None)
            elif (result := job.then(outputs)) is not None:
                self._completions.put(*result)
        else:
            self._completions.put_many([r for r in map(_then, results) if r is not None])

    def _expire(self, batch: list[Job], now: int) -> list[Job]:
        """Drop cancelled requests and answer those that waited past [batching] timeout_us."""
        keep: list[Job] = []
        expired: list[Result] = []
        for job in batch:
            if job.future.cancelled():
                expired.append((job, None, None))
            elif self._timeout_ns and now - job.enqueued > self._timeout_ns:
                waited = (now - job.enqueued) // 1000
                error = Unavailable(
                    f"model {self.label}: request timed out in the queue after {waited} us "
                    f"([batching] timeout_us = {self._timeout_ns // 1000})"
                )
                expired.append((job, None, error))
            else:
                keep.append(job)
        if expired:
            self._completions.put_many(expired)
        return keep


def _then(result: Result) -> Result | None:
    """A batch's result to deliver: as it is, or what its job's continuation gives."""
    job, outputs, _ = result
    return result if job.then is None else job.then(outputs)


def _any_cancelled(batch: list[Job]) -> bool:
    for job in batch:  # noqa: SIM110 - a plain loop: no generator object per batch
        if job.future.cancelled():
            return True
    return False
