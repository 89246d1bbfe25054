"""The jobs door over HTTP: submit, observe and control async jobs (docs/jobs.md, issue 15).

    POST   /v2/models/{m}[/versions/{v}]/jobs      any body the infer URL takes -> 202 + job
    POST   /v2/models/{m}[/versions/{v}]/infer     the same with ``Prefer: respond-async``
    GET    /v2/jobs?model=&state=&limit=&cursor=   the caller's jobs, newest first, paged
    GET    /v2/jobs/{job}                          one job
    GET    /v2/jobs/{job}/result                   its v2 infer response, JSON or binary
    GET    /v2/jobs/{job}/events                   server-sent events: its every change
    DELETE /v2/jobs/{job}                          cancel it, or forget a finished one
    WebSocket /v2/jobs/events                      changes of the jobs subscribed to

What a job does is jobs/api.py's; this module reads requests and writes answers (the two
watching routes are job_events.py's). A job keeps
its request as this door received it, and `StoredCodec` decodes it again when the job runs
(the same codec.py and forms.py as the infer URL) and encodes its answer the way the infer
URL would have: the result is that response's bytes, content type and header length.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response

from .. import wire
from ..inference import InferRequest, InferResponse
from ..jobs.api import Jobs
from ..jobs.job import Request, Result
from ..models import ModelVersion
from . import codec, forms
from .asgi import BINARY, JSON, STATUS_KEY, Receive, Scope, Send, send_failure
from .endpoints import MODEL, VERSIONED, JSONResponse
from .infer import ClientDisconnected, receive_body
from .job_events import Watching, caller
from .routes import Access, Route

log = logging.getLogger("cinfer")

CALLBACK_HEADER = b"callback-url"
CALLBACK_QUERY = "callback_url"


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


class JobsEndpoint:
    """The jobs routes, over `Jobs`."""

    def __init__(self, jobs: Jobs, max_request_bytes: int) -> None:
        self.jobs = jobs
        self.limit = max_request_bytes
        self.watching = Watching(jobs)

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
        except ClientDisconnected:
            return
        except Exception as exc:
            await send_failure(scope, send, exc, f"a job submitted for model {params['model']}")
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
            Route("GET", f"{one}/events", self.watching.events, Access.JOBS,
                  "Server-sent events: the job's state now, then each change", tag="jobs",
                  media_type="text/event-stream", errors=(404,)),
            Route("WEBSOCKET", "/v2/jobs/events", self.watching.socket, Access.JOBS,
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
