"""Watching jobs over HTTP: server-sent events for one job, a WebSocket for many (issue 15).

Both subscribe to the jobs' news (jobs/events.py) before they read a job's current state,
send that first, then every change, each as the job `GET /v2/jobs/{id}` shows: a late
watcher misses nothing and sees nothing twice (the revision says which news is old).

    GET /v2/jobs/{job}/events     text/event-stream; ends once the job has finished
    WebSocket /v2/jobs/events     {"subscribe": ["<id>", ...]} or {"subscribe": "all"}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import CinferError, InvalidRequest, show
from ..jobs.api import ANONYMOUS, Caller, Jobs
from ..jobs.events import Overflow
from ..jobs.job import Job
from .asgi import GRANT_KEY, Receive, Scope, Send

log = logging.getLogger("cinfer")

KEEP_ALIVE_S = 15.0
"""An SSE stream sends a comment this often while nothing happens (proxies close idle ones)."""
MAX_SUBSCRIBED = 10_000
"""Job ids one WebSocket may subscribe to."""


def caller(scope: Mapping[str, Any]) -> Caller:
    """Who a request comes from, as jobs/api.py sees callers (anonymous: authentication off)."""
    grant = scope.get(GRANT_KEY)
    if grant is None:
        return ANONYMOUS
    models = grant.allows_model if grant.patterns else None
    return Caller(grant.id, "admin" in grant.permissions, models)


class Watching:
    """The SSE and WebSocket endpoints over `Jobs`."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    async def events(self, request: HTTPRequest) -> Response:
        """Server-sent events: the job now, then each change, until it has finished."""
        job_id = request.path_params["job"]
        subscription = self.jobs.watch(lambda job: job.id == job_id)
        try:  # subscribed first, read second: no change falls between the two
            job = await self.jobs.find(job_id, caller(request.scope))
        except BaseException:
            subscription.close()
            raise
        prefix = request.scope.get("root_path", "")

        async def stream() -> AsyncIterator[bytes]:
            with subscription:
                current = job
                subscription.fresh(current)
                yield _event(current, prefix)
                while not current.finished:
                    try:
                        current = await asyncio.wait_for(subscription.next(), KEEP_ALIVE_S)
                    except TimeoutError:
                        yield b": still watching\n\n"
                        continue
                    except Overflow as exc:
                        yield b"event: error\ndata: " + orjson.dumps({"error": str(exc)}) + b"\n\n"
                        return
                    yield _event(current, prefix)

        return StreamingResponse(
            stream(), media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )  # fmt: skip

    async def socket(
        self, scope: Scope, receive: Receive, send: Send, params: Mapping[str, str]
    ) -> None:
        """The WebSocket: ``{"subscribe": ["<id>", ...]}`` or ``{"subscribe": "all"}`` (every
        job of the caller's, those submitted later included); each subscribed job's current
        state is sent first, then every change, each message one job as GET shows it."""
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        who = caller(scope)
        prefix = scope.get("root_path", "")
        wanted: set[str] = set()
        everything = False

        def wants(job: Job) -> bool:  # another's job never, whatever was asked
            return (everything or job.id in wanted) and who.sees(job)

        with self.jobs.watch(wants) as subscription:

            async def send_news() -> None:
                while True:
                    job = await subscription.next()
                    await websocket.send_text(text(job.answer(prefix)))

            async def read_requests() -> None:
                nonlocal everything
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        raise WebSocketDisconnect(message.get("code", 1000))
                    try:
                        subscribing = _subscription(message.get("text") or message.get("bytes"))
                    except InvalidRequest as exc:
                        await websocket.send_text(text({"error": exc.message}))
                        continue
                    if subscribing is None:
                        everything = True
                        current = await self.jobs.current(who)
                    else:
                        if len(wanted) + len(subscribing) > MAX_SUBSCRIBED:
                            await websocket.send_text(text({
                                "error": f"at most {MAX_SUBSCRIBED} jobs per connection"
                            }))  # fmt: skip
                            continue
                        current = []
                        for job_id in subscribing:
                            wanted.add(job_id)
                            try:
                                current.append(await self.jobs.find(job_id, who))
                            except CinferError as exc:
                                wanted.discard(job_id)
                                await websocket.send_text(text({"error": exc.message}))
                    for job in current:
                        if subscription.fresh(job):
                            await websocket.send_text(text(job.answer(prefix)))

            tasks = [asyncio.ensure_future(send_news()), asyncio.ensure_future(read_requests())]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                        await task
            for task in done:
                error = task.exception() if not task.cancelled() else None
                if isinstance(error, Overflow):
                    with contextlib.suppress(Exception):
                        await websocket.close(1013, f"too slow: {error}")
                elif error is not None and not isinstance(error, WebSocketDisconnect):
                    log.error("jobs WebSocket failed", exc_info=error)
                    with contextlib.suppress(Exception):
                        await websocket.close(1011, "internal error (see the server log)")


def _subscription(text: str | bytes | None) -> list[str] | None:
    """The job ids a WebSocket message subscribes to; None for all of the caller's."""
    try:
        message = orjson.loads(text or b"")
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"a subscription is JSON: {exc}") from None
    wanted = message.get("subscribe") if isinstance(message, dict) else None
    if wanted == "all":
        return None
    if isinstance(wanted, list) and all(isinstance(i, str) and 0 < len(i) <= 64 for i in wanted):
        return list(wanted)
    raise InvalidRequest(
        f'a subscription is {{"subscribe": ["<job id>", ...]}} or {{"subscribe": "all"}}, '
        f"not {show(message)}"
    )


def text(value: object) -> str:
    """A WebSocket message: JSON in a text frame (a browser reads it as a string)."""
    return orjson.dumps(value).decode()


def _event(job: Job, prefix: str) -> bytes:
    """One SSE message: the job (unnamed, so EventSource's onmessage gets it), its revision
    as the event id."""
    return f"id: {job.revision}\ndata: ".encode() + orjson.dumps(job.answer(prefix)) + b"\n\n"
