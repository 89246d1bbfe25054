"""What the jobs API does, independent of HTTP: submit, observe, control (issue 15).

    door: POST .../jobs ──► Jobs.submit: checked now (model, body, schema, callback host,
                            the token's queue limit), committed, then 202
          GET, DELETE   ──► Jobs.find / page / result / remove, as the `Caller` may see them
          WebSocket, SSE ──► Jobs.watch: the current state, then every change (events.py)

    runner.py: each model's queued jobs, run on its pool in the gaps synchronous requests
    leave; store.py: the rows and payloads; webhook.py: the callbacks when jobs finish.

Ownership: a job belongs to the API token that submitted it (`Caller.owner`); a caller sees
its own jobs, a token with `admin` those on every model it may use, and with authentication
off every job is anonymous and everyone's. A job another caller may not see is a 404, as if
it did not exist. The HTTP door's guard counted the submission against the token's quota and
rate; a run, a retry or a restart counts nothing again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..dataplane import DataPlane, check_target
from ..errors import Conflict, InvalidRequest, NotFound, TooManyRequests, show
from ..settings import JobsSettings
from .events import Events, Subscription
from .job import FINISHED, UNFINISHED, Job, Request, Result, State
from .runner import Codec, Recheck, Runners
from .store import JobStore
from .webhook import Callbacks

log = logging.getLogger("cinfer")

PAGE = 100
"""Jobs per page of the listing, unless the caller asks for fewer (at most MAX_PAGE)."""
MAX_PAGE = 1000
PURGES_PER_RETENTION = 10
"""How often within one retention period finished jobs are looked for (at most every minute)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: the API token's id (None with authentication off) and what it may see."""

    owner: str | None
    admin: bool = False
    """A token with `admin`: it sees the jobs of others too, on the models `models` allows."""
    models: Callable[[str], bool] | None = None
    """Which models it may use; None: every one."""

    def sees(self, job: Job) -> bool:
        if job.owner == self.owner:
            return True
        return self.admin and (self.models is None or self.models(job.model))


ANONYMOUS = Caller(None, admin=True)
"""Every caller when authentication is off: every job is anonymous, and everyone's."""


class Jobs:
    """The server's jobs: its database, its runners, its watchers and its callbacks."""

    def __init__(
        self,
        settings: JobsSettings,
        dataplane: DataPlane,
        codec: Codec,
        *,
        recheck: Recheck | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.dataplane = dataplane
        self.codec = codec
        self.clock = clock
        self.store = JobStore(settings.database, inline_bytes=settings.inline_bytes)
        self.events = Events()
        self.callbacks = Callbacks(settings, self._called_back)
        self.runners = Runners(
            self.store, dataplane, codec, self._changed, recheck=recheck,
            yield_ms=settings.yield_ms, clock=clock,
        )  # fmt: skip
        self._unfinished: dict[str | None, int] = {}
        self._purging: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database; queue again what the last run left queued or running; resume
        undelivered callbacks; start purging what is past its retention."""
        await self.store.open()
        for job in await self.store.recover(self.settings.max_attempts, self.clock()):
            if job.state is State.FAILED:
                log.warning("job %s failed: %s", job.id, job.error)
        waiting = await self.store.unfinished()
        for job in waiting:
            self._unfinished[job.owner] = self._unfinished.get(job.owner, 0) + 1
        if waiting:
            log.info("jobs: %d queued from the last run", len(waiting))
        self.runners.enqueue(waiting)
        for job in await self.store.undelivered():
            self.callbacks.deliver(job)
        self._purging = asyncio.get_running_loop().create_task(self._purge_periodically())

    async def stop(self, grace: float = 5.0) -> None:
        """Stop starting jobs, let those in flight finish within `grace`, close."""
        if self._purging is not None:
            self._purging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purging
        try:
            await self.runners.stop(grace)
            await self.callbacks.stop()
        finally:
            await self.store.close()

    # -- submit ---------------------------------------------------------------------------

    async def submit(
        self,
        model: str,
        version: str | None,
        request: Request,
        caller: Caller,
        callback_url: str | None = None,
    ) -> Job:
        """Check a job's request as the infer URL would, store it, queue it; committed when
        this returns, so it survives a crash from then on."""
        if callback_url is not None:
            self.callbacks.check(callback_url)
        found, _ = self.dataplane.serving(model, version)  # 404 unknown, 503 not serving
        decoded = self.codec.decode(request, found)  # 400 a body that does not parse
        check_target(decoded, found)
        found.check(decoded)  # 400 a body that does not fit the model's schema
        owner = caller.owner
        count = self._unfinished.get(owner, 0)
        limit = self.settings.max_queued_per_token
        if count >= limit:
            who = "this API token has" if owner is not None else "the server has"
            raise TooManyRequests(
                f"{who} {count} unfinished jobs, the most [jobs] max_queued_per_token allows "
                f"({limit}): wait for some to finish",
                retry_after=5,
            )
        self._unfinished[owner] = count + 1  # taken now: concurrent submissions see it
        job = Job(
            id=secrets.token_hex(8), seq=0, owner=owner, model=model, version=version,
            state=State.QUEUED, attempts=0, revision=1, created_at=self.clock(),
            started_at=None, finished_at=None, error=None, model_version=None,
            callback_url=callback_url, callback_status=None, callback_attempts=0,
            callback_error=None,
        )  # fmt: skip
        try:
            job = await self.store.add(job, request)
        except BaseException:
            self._unfinished[owner] -= 1
            raise
        self.events.publish(job)
        self.runners.enqueue([job])
        return job

    # -- observe --------------------------------------------------------------------------

    async def find(self, job_id: str, caller: Caller) -> Job:
        """The job, or 404 when there is none the caller may see."""
        job = await self.store.get(job_id) if len(job_id) <= 64 else None
        if job is None or not caller.sees(job):
            raise NotFound(f"no job {show(job_id)}")
        return job

    async def page(
        self,
        caller: Caller,
        model: str | None = None,
        state: str | None = None,
        limit: str | None = None,
        cursor: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """One page of the caller's jobs, newest first, and the cursor of the next (None on
        the last); the arguments as the query string gave them, checked here."""
        wanted = None
        if state is not None:
            try:
                wanted = State(state)
            except ValueError:
                raise InvalidRequest(
                    f"state {show(state)} is not one of {', '.join(s.value for s in State)}"
                ) from None
        size = PAGE
        if limit is not None:
            if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit[:8]) <= MAX_PAGE:
                raise InvalidRequest(f"limit {show(limit)} is not a whole number 1..{MAX_PAGE}")
            size = int(limit)
        before = None
        if cursor is not None:
            if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
                raise InvalidRequest(f"cursor {show(cursor)} is not one this server gave")
            before = int(cursor)
        jobs = await self.store.page(
            owner=caller.owner, anyone=caller.admin,
            visible=caller.sees if caller.models is not None else None,
            model=model, state=wanted, before=before, limit=size,
        )  # fmt: skip
        return jobs, (str(jobs[-1].seq) if len(jobs) == size else None)

    async def result(self, job_id: str, caller: Caller) -> Result:
        """A succeeded job's answer; 409 naming the state of one that has none."""
        job = await self.find(job_id, caller)
        if job.state is not State.SUCCEEDED:
            raise Conflict(_no_result(job))
        result = await self.store.result(job.id)
        if result is None:
            raise NotFound(f"job {job.id}: its result is gone (deleted meanwhile)")
        return result

    def watch(self, wants: Callable[[Job], bool]) -> Subscription:
        """News of the jobs `wants` accepts; read their current state after subscribing."""
        return self.events.subscribe(wants)

    async def current(self, caller: Caller) -> list[Job]:
        """The caller's unfinished jobs, oldest first: what "all my jobs" starts with."""
        jobs = await self.store.unfinished()
        return [job for job in jobs if caller.sees(job)]

    # -- control --------------------------------------------------------------------------

    async def remove(self, job_id: str, caller: Caller) -> Job:
        """Cancel a queued or running job (the job, canceled), or forget a finished one, its
        input and its result (the job as it was)."""
        job = await self.find(job_id, caller)
        if job.state in UNFINISHED:
            canceled = await self.store.cancel(job.id, self.clock())
            if canceled is not None:
                self._changed(canceled)
                self.runners.cancel(canceled)
                return canceled
            job = await self.find(job_id, caller)  # it finished meanwhile: delete it
        await self.store.delete([job.id])
        return job

    async def purge(self) -> int:
        """Forget the finished jobs past ``[jobs] retention_hours``; how many."""
        before = self.clock() - self.settings.retention_hours * 3600
        total = 0
        while True:
            expired = await self.store.expired(before)
            total += await self.store.delete(expired)
            if len(expired) < 500:
                return total

    # -- plumbing -------------------------------------------------------------------------

    def _changed(self, job: Job) -> None:
        """Every committed move: unfinished counts, watchers, the callback of a finished job."""
        if job.state in FINISHED:  # each job finishes once: store.py's moves are conditional
            if job.callback_status == "pending":
                self.callbacks.deliver(job)
            self._unfinished[job.owner] = max(0, self._unfinished.get(job.owner, 0) - 1)
        self.events.publish(job)

    async def _called_back(
        self, job_id: str, status: str, attempts: int, error: str | None
    ) -> Job | None:
        job = await self.store.called_back(job_id, status, attempts, error)
        if job is not None:
            self.events.publish(job)
        return job

    async def _purge_periodically(self) -> None:
        interval = min(60.0, self.settings.retention_hours * 3600 / PURGES_PER_RETENTION)
        while True:
            await asyncio.sleep(interval)
            try:
                purged = await self.purge()
            except Exception:
                log.exception("jobs: purging finished jobs failed (will retry)")
                continue
            if purged:
                log.info("jobs: purged %d finished job(s) past their retention", purged)


def _no_result(job: Job) -> str:
    if job.state is State.FAILED:
        return f"job {job.id} failed, it has no result: {job.error}"
    if job.state is State.CANCELED:
        return f"job {job.id} was canceled, it has no result"
    return f"job {job.id} is {job.state.value}: its result is not ready yet"
