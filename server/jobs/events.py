"""Jobs' state changes, pushed to whoever watches them (the WebSocket and the SSE stream).

Every move a job makes (store.py) is published here once it has committed, as the job's new
row. A watcher subscribes before it reads a job's current state, sends that first, then
the news: each row carries the job's `revision`, so news older than what it has sent is
skipped and a late subscriber neither misses a change nor sees one twice.

A watcher that does not keep up (its backlog past `BACKLOG`) is dropped rather than let the
server hold unbounded news for it: `Subscription.next` raises `Overflow`, and the door closes
the connection saying so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .job import Job

BACKLOG = 10_000
"""Changes held for one watcher before it is dropped."""


class Overflow(Exception):
    """The watcher fell more than BACKLOG changes behind."""


class Subscription:
    """One watcher's news: the changes of the jobs its `wants` accepts, in order."""

    def __init__(self, events: Events, wants: Callable[[Job], bool]) -> None:
        self.wants = wants
        self._events = events
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self._seen: dict[str, int] = {}
        self.overflowed = False

    def deliver(self, job: Job) -> None:
        if self.overflowed:
            return
        if self._queue.qsize() >= BACKLOG:
            self.overflowed = True
            self._queue.put_nowait(None)
            return
        self._queue.put_nowait(job)

    def fresh(self, job: Job) -> bool:
        """Whether `job` is newer than what this watcher has been given of it (and note it)."""
        if self._seen.get(job.id, 0) >= job.revision:
            return False
        self._seen[job.id] = job.revision
        return True

    async def next(self) -> Job:
        """The next change not seen yet."""
        while True:
            job = await self._queue.get()
            if job is None:
                raise Overflow(f"more than {BACKLOG} changes behind")
            if self.fresh(job):
                return job

    def close(self) -> None:
        self._events.subscribers.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Events:
    """Who watches which jobs; `publish` hands each change to them."""

    def __init__(self) -> None:
        self.subscribers: set[Subscription] = set()

    def subscribe(self, wants: Callable[[Job], bool]) -> Subscription:
        subscription = Subscription(self, wants)
        self.subscribers.add(subscription)
        return subscription

    def publish(self, job: Job) -> None:
        for subscription in list(self.subscribers):
            if subscription.wants(job):
                subscription.deliver(job)
