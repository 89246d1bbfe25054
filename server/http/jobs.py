"""The jobs door over HTTP: submit, observe and control async jobs (docs/jobs.md, issue 15).

    POST   /v2/models/{m}[/versions/{v}]/jobs      any body the infer URL takes -> 202 + job
    POST   /v2/models/{m}[/versions/{v}]/infer     the same with ``Prefer: respond-async``
    GET    /v2/jobs?model=&state=&limit=&cursor=   the caller's jobs, newest first, paged
    GET    /v2/jobs/{job}                          one job
    GET    /v2/jobs/{job}/result                   its v2 infer response, JSON or binary
    GET    /v2/jobs/{job}/events                   server-sent events: its every change
    DELETE /v2/jobs/{job}                          cancel it, or forget a finished one
    WebSocket /v2/jobs/events                      changes of the jobs subscribed to

What a job does is jobs/api.py's; this module reads requests and writes answers. A job keeps
its request as this door received it, and `StoredCodec` decodes it again when the job runs
(the same codec.py and forms.py as the infer URL) and encodes its answer the way the infer
URL would have: the result is that response's bytes, content type and header length.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import wire
from ..errors import CinferError, InvalidRequest, show
from ..inference import InferRequest, InferResponse
from ..jobs.api import ANONYMOUS, Caller, Jobs
from ..jobs.events import Overflow
from ..jobs.job import Job, Request, Result
from ..models import ModelVersion
from . import codec, forms
from .asgi import BINARY, GRANT_KEY, JSON, STATUS_KEY, Receive, Scope, Send, send_error
from .endpoints import MODEL, VERSIONED, JSONResponse
from .infer import ClientDisconnected, receive_body
from .routes import Access, Route

log = logging.getLogger("cinfer")

CALLBACK_HEADER = b"callback-url"
CALLBACK_QUERY = "callback_url"
KEEP_ALIVE_S = 15.0
"""An SSE stream sends a comment this often while nothing happens (proxies close idle ones)."""
MAX_SUBSCRIBED = 10_000
"""Job ids one WebSocket may subscribe to."""


class StoredCodec:
    """A job's stored request decoded as the infer URL decodes it; its answer encoded alike."""

    def __init__(self) -> None:
        self.decoder = codec.Decoder()

    def decode(self, request: Request, version: ModelVersion) -> InferRequest:
        if forms.is_form(request.content_type.encode("latin-1")):
            return forms.decode(
                request.body, request.content_type, request.query.encode("latin-1"), version
            )
        length = str(request.header_length) if request.header_length is not None else None
        return self.decoder.decode(request.body, length)

    def encode(self, response: InferResponse) -> Result:
        payload, json_length = codec.encode_response(response)
        if json_length is None:
            return Result(payload, JSON.decode())
        return Result(payload, BINARY.decode(), json_length)


def caller(scope: Mapping[str, Any]) -> Caller:
    """Who a request comes from, as jobs/api.py sees callers (anonymous: authentication off)."""
    grant = scope.get(GRANT_KEY)
    if grant is None:
        return ANONYMOUS
    models = grant.allows_model if grant.patterns else None
    return Caller(grant.id, "admin" in grant.permissions, models)


class JobsEndpoint:
    """The jobs routes, over `Jobs`."""

    def __init__(self, jobs: Jobs, max_request_bytes: int) -> None:
        self.jobs = jobs
        self.limit = max_request_bytes

    # -- submit (raw ASGI, like the infer URL it mirrors) ---------------------------------

    async def submit(
        self, scope: Scope, receive: Receive, send: Send, params: Mapping[str, str]
    ) -> None:
        await self._submit(scope, receive, send, params, preferred=False)

    async def prefer(
        self, scope: Scope, receive: Receive, send: Send, params: Mapping[str, str]
    ) -> None:
        """The infer URL's request with ``Prefer: respond-async`` (infer.py hands it over)."""
        await self._submit(scope, receive, send, params, preferred=True)

    async def _submit(
        self, scope: Scope, receive: Receive, send: Send, params: Mapping[str, str],
        preferred: bool,
    ) -> None:  # fmt: skip
        headers: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key, value)
        try:
            body = await receive_body(receive, headers.get(b"content-length"), self.limit)
            encoding = headers.get(b"content-encoding")
            if encoding:
                body = codec.decompress(
                    body, encoding.decode("latin-1").strip().lower(), self.limit
                )
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), True)
            callback = headers.get(CALLBACK_HEADER)
            url = callback.decode("latin-1").strip() if callback is not None else None
            if not preferred:
                for key, value in query:
                    if key == CALLBACK_QUERY:
                        url = value
                query = [(k, v) for k, v in query if k != CALLBACK_QUERY]
            request = _request(body, headers, urlencode(query))
            job = await self.jobs.submit(
                params["model"], params.get("version"), request, caller(scope), url
            )
        except CinferError as exc:
            scope[STATUS_KEY] = exc.status_code
            await send_error(send, exc.status_code, exc.message, exc.headers)
            return
        except ClientDisconnected:
            return
        prefix = scope.get("root_path", "")
        answer = orjson.dumps(job.answer(prefix))
        extra = [(b"location", f"{prefix}/v2/jobs/{job.id}".encode())]
        if preferred:
            extra.append((b"preference-applied", b"respond-async"))
        scope[STATUS_KEY] = 202
        await send({"type": "http.response.start", "status": 202, "headers": [
            (b"content-type", JSON), (b"content-length", str(len(answer)).encode()), *extra,
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": answer})

    # -- observe and control (Starlette endpoints) ----------------------------------------

    async def listing(self, request: HTTPRequest) -> Response:
        query = request.query_params
        jobs, cursor = await self.jobs.page(
            caller(request.scope), query.get("model"), query.get("state"), query.get("limit"),
            query.get("cursor"),
        )  # fmt: skip
        prefix = request.scope.get("root_path", "")
        answer: wire.JobListAnswer = {
            "jobs": [job.answer(prefix) for job in jobs],
            "next_cursor": cursor,
        }
        return JSONResponse(answer)

    async def get(self, request: HTTPRequest) -> Response:
        job = await self.jobs.find(request.path_params["job"], caller(request.scope))
        return JSONResponse(job.answer(request.scope.get("root_path", "")))

    async def result(self, request: HTTPRequest) -> Response:
        found = await self.jobs.result(request.path_params["job"], caller(request.scope))
        headers = {}
        if found.header_length is not None:
            headers["inference-header-content-length"] = str(found.header_length)
        body, used = codec.compress(found.body, request.headers.get("accept-encoding"))
        if used:
            headers["content-encoding"] = used
        return Response(body, media_type=found.content_type, headers=headers)

    async def remove(self, request: HTTPRequest) -> Response:
        job = await self.jobs.remove(request.path_params["job"], caller(request.scope))
        return JSONResponse(job.answer(request.scope.get("root_path", "")))

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

        def wants(job: Job) -> bool:
            return job.id in wanted or (everything and who.sees(job))

        with self.jobs.watch(wants) as subscription:

            async def send_news() -> None:
                while True:
                    job = await subscription.next()
                    await websocket.send_bytes(orjson.dumps(job.answer(prefix)))

            async def read_requests() -> None:
                nonlocal everything
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        raise WebSocketDisconnect(message.get("code", 1000))
                    try:
                        subscribing = _subscription(message.get("text") or message.get("bytes"))
                    except InvalidRequest as exc:
                        await websocket.send_bytes(orjson.dumps({"error": exc.message}))
                        continue
                    if subscribing is None:
                        everything = True
                        current = await self.jobs.current(who)
                    else:
                        if len(wanted) + len(subscribing) > MAX_SUBSCRIBED:
                            await websocket.send_bytes(orjson.dumps({
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
                                await websocket.send_bytes(orjson.dumps({"error": exc.message}))
                    for job in current:
                        if subscription.fresh(job):
                            await websocket.send_bytes(orjson.dumps(job.answer(prefix)))

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

    def routes(self) -> list[Route]:
        one = "/v2/jobs/{job}"
        routes = [
            Route("POST", f"{prefix}/jobs", self.submit, Access.INFER,
                  f"Submit an async job (any body the infer URL takes{of})", tag="jobs",
                  description="Answered 202 with the job once it is stored; `Location` names "
                  "it. Header `Callback-URL` (or query `callback_url`): POST the finished job "
                  "there, signed (docs/jobs.md).",
                  raw=True, body=wire.InferenceRequest, answer=wire.JobAnswer, status=202,
                  query=(CALLBACK_QUERY,), errors=(400, 404, 413, 415, 503))
            for prefix, of in ((MODEL, ""), (VERSIONED, ", one version"))
        ]  # fmt: skip
        routes += [
            Route("GET", "/v2/jobs", self.listing, Access.JOBS,
                  "The caller's jobs, newest first (admin: everyone's)", tag="jobs",
                  answer=wire.JobListAnswer, query=("model", "state", "limit", "cursor"),
                  errors=(400,)),
            Route("GET", one, self.get, Access.JOBS, "One job", tag="jobs",
                  answer=wire.JobAnswer, errors=(404,)),
            Route("DELETE", one, self.remove, Access.JOBS,
                  "Cancel a queued or running job, or delete a finished one", tag="jobs",
                  answer=wire.JobAnswer, errors=(404,)),
            Route("GET", f"{one}/result", self.result, Access.JOBS,
                  "A succeeded job's v2 infer response (JSON, or binary as requested)",
                  tag="jobs", answer=wire.InferenceResponse, errors=(404, 409)),
            Route("GET", f"{one}/events", self.events, Access.JOBS,
                  "Server-sent events: the job's state now, then each change", tag="jobs",
                  media_type="text/event-stream", errors=(404,)),
            Route("WEBSOCKET", "/v2/jobs/events", self.socket, Access.JOBS,
                  "Changes of the jobs subscribed to", tag="jobs", raw=True),
        ]  # fmt: skip
        return routes


def _request(body: bytes, headers: Mapping[bytes, bytes], query: str) -> Request:
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    length = headers.get(b"inference-header-content-length")
    if length is None or forms.is_form(content_type.encode("latin-1")):
        return Request(body, content_type, None, query)
    return Request(
        body, content_type, codec.header_size(length.decode("latin-1"), len(body)), query
    )


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


def _event(job: Job, prefix: str) -> bytes:
    """One SSE message: the job (unnamed, so EventSource's onmessage gets it), its revision
    as the event id."""
    return f"id: {job.revision}\ndata: ".encode() + orjson.dumps(job.answer(prefix)) + b"\n\n"
