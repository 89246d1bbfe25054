"""Running jobs: one runner per model, on the pools synchronous requests use, yielding to them.

A job goes through `DataPlane.exchange` like any request (checked, counted, batched and
logged by the same code); what is its own is when it starts. Each model's `ModelRunner`
keeps its queued jobs in submission order and starts the next one only when

- fewer of its jobs are in flight than the pool has instances (a job never queues behind
  another job inside the pool, where a synchronous request would have to wait for both), and
- the pool holds no synchronous request and none has finished for ``[jobs] yield_ms``:
  synchronous traffic on the model pauses its jobs, which take the gaps it leaves.

So with a thousand jobs queued, a synchronous request meets at most one job per instance
ahead of it, and only one that started in a gap (docs/performance.md, "Async jobs"). Jobs
wait while their model has no READY version (loading, reloading); a job whose model or version
is gone from the repository fails.

A job's run: queued -> running (one more attempt, committed), the submitter's token checked
again (`infer` on the model: it may have been revoked meanwhile), the request decoded from
what was stored, run, the encoded answer stored, -> succeeded. A refusal by the pool (503:
queue full, unloading) puts the job back at the head of the queue without counting the
attempt; any other error fails it with that error's message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from ..dataplane import DataPlane
from ..errors import CinferError, NotFound, Unavailable
from ..inference import InferRequest, InferResponse
from ..models import ModelVersion
from ..scheduler import InstancePool
from .job import Job, Request, Result
from .store import JobStore

log = logging.getLogger("cinfer")

QUIET_LOOKS = 4
"""Looks at a version's request count, all unchanged, before its pool counts as quiet."""
WAIT_FOR_MODEL_S = 0.5
"""How often a runner whose model has no READY version looks again."""


class Codec(Protocol):
    """How a door's stored request becomes an InferRequest again, and an answer its bytes."""

    def decode(self, request: Request, version: ModelVersion) -> InferRequest: ...

    def encode(self, response: InferResponse) -> Result: ...


Recheck = Callable[[str, str], object]
"""(token id, model): raises the 401/403 that says why the token may not run it now."""
Changed = Callable[[Job], None]
"""Told of every move a job made, once it has committed."""


class Runners:
    """Every model's runner, and how one job runs."""

    def __init__(
        self,
        store: JobStore,
        dataplane: DataPlane,
        codec: Codec,
        changed: Changed,
        *,
        recheck: Recheck | None = None,
        yield_ms: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.dataplane = dataplane
        self.codec = codec
        self.changed = changed
        self.recheck = recheck
        self.yield_s = yield_ms / 1000
        self.clock = clock
        self.models: dict[str, ModelRunner] = {}
        self._stopping = False

    def enqueue(self, jobs: Iterable[Job]) -> None:
        """Queue jobs (in submission order) on their models' runners."""
        for job in jobs:
            runner = self.models.get(job.model)
            if runner is None:
                runner = self.models[job.model] = ModelRunner(job.model, self)
            runner.add(job)

    def cancel(self, job: Job) -> None:
        """Take a job that was just canceled off its queue, or stop it running."""
        runner = self.models.get(job.model)
        if runner is not None:
            runner.drop(job.id)

    async def stop(self, grace: float) -> None:
        """Start nothing more; give the jobs in flight `grace` seconds, then cut them off
        (they stay running in the database, and run again at the next start)."""
        self._stopping = True
        runners = list(self.models.values())
        for runner in runners:
            runner.halt()
        flying = [task for runner in runners for task in runner.running.values()]
        if flying:
            await asyncio.wait(flying, timeout=grace)
        for runner in runners:
            await runner.close()

    async def run(self, runner: ModelRunner, job: Job) -> None:
        """One job, from queued to its end (or back to the queue)."""
        started = await self.store.start(job.id, self.clock())
        if started is None:
            return  # canceled meanwhile
        self.changed(started)
        served: list[str] = []
        codec = self.codec

        def encode(response: InferResponse) -> Result:
            served.append(response.model_version)
            return codec.encode(response)

        try:
            if started.owner is not None and self.recheck is not None:
                self.recheck(started.owner, job.model)
            request = await self.store.request(job.id)
            if request is None:
                raise NotFound(f"job {job.id}: its stored input is missing")
            try:
                result = await self.dataplane.exchange(
                    job.model,
                    job.version,
                    lambda: codec.decode(request, self.dataplane.version(job.model, job.version)),
                    encode,
                )
            finally:
                runner.counted()
        except asyncio.CancelledError:
            raise  # canceled (the store says so already), or the server is stopping
        except Unavailable as exc:
            moved = await self.store.requeue(job.id, exc.message)
            if moved is not None:
                self.changed(moved)
                runner.add(moved, first=True)
            return
        except CinferError as exc:
            failed = await self.store.fail(job.id, self.clock(), exc.message)
        except Exception as exc:  # a bug of ours: the job fails, the server goes on
            log.error("job %s on model %s failed unexpectedly", job.id, job.model, exc_info=exc)
            failed = await self.store.fail(
                job.id, self.clock(), "internal server error while running the job (see the "
                "server log)",
            )  # fmt: skip
        else:
            failed = await self.store.succeed(job.id, self.clock(), served[-1], result)
        if failed is not None:
            self.changed(failed)


class ModelRunner:
    """The queued jobs of one model, started in the gaps its synchronous requests leave."""

    def __init__(self, model: str, runners: Runners) -> None:
        self.model = model
        self.runners = runners
        self.queue: collections.deque[Job] = collections.deque()
        self.running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._halted = False
        # What the yielding watches: the version last seen, its requests counted so far
        # less this runner's own, and when that count last moved.
        self._version: ModelVersion | None = None
        self._others = 0
        self._mine = 0
        self._active_at = 0.0
        self._calm = 0

    def add(self, job: Job, first: bool = False) -> None:
        if first:
            self.queue.appendleft(job)
        else:
            self.queue.append(job)
        if self._task is None and not self._halted:
            self._task = asyncio.get_running_loop().create_task(self._loop())
        self._wake.set()

    def drop(self, job_id: str) -> None:
        for job in self.queue:
            if job.id == job_id:
                self.queue.remove(job)
                break
        task = self.running.get(job_id)
        if task is not None:
            task.cancel()

    def counted(self) -> None:
        """One of this runner's jobs was counted in its version's request statistics."""
        self._mine += 1

    def halt(self) -> None:
        self._halted = True
        self._wake.set()

    async def close(self) -> None:
        tasks = [*self.running.values(), *([self._task] if self._task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        dataplane = self.runners.dataplane
        await dataplane.wait_ready()
        pause = max(self.runners.yield_s / 4, 0.002)
        while not self._halted:
            if not self.queue or len(self.running) >= self._limit():
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self.queue[0]
            try:
                found, pool = dataplane.serving(self.model, job.version)
            except NotFound as exc:  # the model or version is gone: the job cannot run
                self.queue.popleft()
                failed = await self.runners.store.fail(
                    job.id, self.runners.clock(), exc.message, queued=True
                )
                if failed is not None:
                    self.runners.changed(failed)
                continue
            except Unavailable:  # no READY version (loading, reloading): wait for one
                await self._nap(WAIT_FOR_MODEL_S)
                continue
            if not self._quiet(found, pool):
                # Busy: look again in yield_ms, then every quarter of it while calm: a busy
                # model is looked at 100 times a second, not 400.
                await asyncio.sleep(pause if self._calm else self.runners.yield_s)
                continue
            self.queue.popleft()
            task = asyncio.get_running_loop().create_task(self.runners.run(self, job))
            self.running[job.id] = task
            task.add_done_callback(functools.partial(self._finished, job.id))

    def _limit(self) -> int:
        try:
            _, pool = self.runners.dataplane.serving(self.model, None)
        except CinferError:
            return 1
        return max(1, pool.instances)

    def _finished(self, job_id: str, _: object) -> None:
        task = self.running.pop(job_id, None)
        self._wake.set()
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("job %s: runner failed", job_id, exc_info=task.exception())

    def _quiet(self, found: ModelVersion, pool: InstancePool) -> bool:
        """Whether the pool is free of synchronous requests, and has been for yield_ms.

        "Has been" is observed, not assumed: the count of the version's requests must stay
        still over QUIET_LOOKS looks spanning yield_ms. One look after the event loop was
        held up (a slow callback, the process descheduled) sees no request finish only
        because none could; the next looks, once the loop has caught up, see them.
        """
        now = time.monotonic()
        stats = found.requests
        counted = stats.success + stats.failure
        if found is not self._version:
            self._version, self._others, self._mine = found, counted, 0
            self._active_at, self._calm = now, 0
        others = counted - self._mine
        if others != self._others or pool.pending > len(self.running):
            self._others, self._active_at, self._calm = others, now, 0
            return False
        self._calm += 1
        yield_s = self.runners.yield_s
        return not yield_s or (self._calm >= QUIET_LOOKS and now - self._active_at >= yield_s)

    async def _nap(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
