"""``/admin/models`` and ``/admin/audit``: the repository changes the console makes, for
automation (the `admin` permission; a token limited to some models changes only those).

    POST   /admin/models/{model}                   a .zip or .tar.gz of a model folder: checked,
                                                   loaded and tried in staging, then published
    POST   /admin/models/{model}/versions          ... of one version's files: the next version
    GET    /admin/models/{model}/config            its model.toml
    PUT    /admin/models/{model}/config            a new model.toml: validated, written, reloaded
    POST   /admin/models/{model}/publish|unpublish ``enabled`` in model.toml
    DELETE /admin/models/{model}                   moved aside into .deleted/, kept
    DELETE /admin/models/{model}/versions/{version}
    GET    /admin/audit?before=&limit=             the audit log, newest first

The work is the Curator's (manage/curator.py), the same as the console's; archives are
streamed to a file in the staging area, never held in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from starlette.requests import Request
from starlette.responses import Response

from ..errors import InvalidRequest, PayloadTooLarge
from ..manage.curator import Actor, Curator, Edit
from ..manage.staging import STAGING, tidy
from .admin import _caller, _json
from .asgi import ADDRESS_KEY
from .endpoints import read_body
from .routes import Access, Route

ARCHIVES = ("application/zip", "application/gzip", "application/x-tar", "application/octet-stream")
MAX_CONFIG = 1 << 20
AUDIT_PAGE = 100


class ModelAdmin:
    """The routes over a Curator (the `admin` permission)."""

    def __init__(self, curator: Curator) -> None:
        self.curator = curator

    def _actor(self, request: Request) -> Actor:
        caller = _caller(request)
        name = f"token {caller.name}" if caller is not None else "api"
        return Actor(name, str(request.scope.get(ADDRESS_KEY, "")))

    async def add_model(self, request: Request) -> Response:
        with await self._received(request) as upload:
            done = await self.curator.add_model(
                request.path_params["model"], upload, self._actor(request)
            )
        return _json(done.public(), 201)

    async def add_version(self, request: Request) -> Response:
        name = request.path_params["model"]
        self.curator.folder(name)  # 404 before a byte is received
        with await self._received(request) as upload:
            done = await self.curator.add_version(name, upload, self._actor(request))
        return _json(done.public(), 201)

    async def _received(self, request: Request) -> contextlib.AbstractContextManager[IO[bytes]]:
        """The body streamed into a temporary file in the staging area (413 past
        ``[repository] max_upload_mb``)."""
        limit = self.curator.max_upload_bytes
        too_large = f"the archive is over {limit >> 20} MB ([repository] max_upload_mb)"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(too_large)
        spool = await asyncio.to_thread(_spool, self.curator.root / STAGING)
        try:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(too_large)
                await asyncio.to_thread(spool.write, chunk)
            if size == 0:
                raise InvalidRequest("the request body is empty: send the archive as the body")
        except BaseException:
            spool.close()
            await asyncio.to_thread(tidy, self.curator.root)
            raise
        return _closing(spool, self.curator.root)

    async def read_config(self, request: Request) -> Response:
        text = await self.curator.read_config(request.path_params["model"])
        return Response(text, media_type="application/toml")

    async def write_config(self, request: Request) -> Response:
        body = await read_body(request, MAX_CONFIG, f"a model.toml is at most {MAX_CONFIG} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"model.toml must be UTF-8 text: {exc}") from exc
        edit = await self.curator.write_config(
            request.path_params["model"], text, self._actor(request)
        )
        return _json(_edit(edit))

    def _published(self, published: bool) -> Any:
        async def change(request: Request) -> Response:
            edit = await self.curator.set_published(
                request.path_params["model"], published, self._actor(request)
            )
            return _json(_edit(edit))

        return change

    async def delete_model(self, request: Request) -> Response:
        edit = await self.curator.delete(request.path_params["model"], None, self._actor(request))
        return _json({"model": edit.model, "moved_to": edit.moved_to})

    async def delete_version(self, request: Request) -> Response:
        text = request.path_params["version"]
        if not (text.isdigit() and text.isascii()):
            raise InvalidRequest(f"version {text!r} is not a version number")
        edit = await self.curator.delete(
            request.path_params["model"], int(text), self._actor(request)
        )
        return _json({"model": edit.model, "version": int(text), "moved_to": edit.moved_to})

    async def audit(self, request: Request) -> Response:
        query = request.query_params
        unknown = set(query) - {"before", "limit"}
        if unknown:
            raise InvalidRequest(f"unknown query parameter(s) {', '.join(sorted(unknown))}")
        before = _number(query.get("before"), "before", 1, None)
        limit = _number(query.get("limit"), "limit", 1, 1000) or AUDIT_PAGE
        entries = await self.curator.accounts.audit_log(limit + 1, before)
        shown = entries[:limit]
        return _json(
            {
                "entries": [dataclasses.asdict(e) for e in shown],
                "next": shown[-1].id if len(entries) > limit else None,
            }
        )

    def routes(self) -> list[Route]:
        one = "/admin/models/{model}"
        model = (400, 404)
        archive = "The body is the archive (Content-Type application/zip or application/gzip)."
        return [
            Route("POST", one, self.add_model, Access.ADMIN,
                  "Upload a new model: a .zip or .tar.gz of its folder, published once it "
                  "loads and answers one inference in staging", description=archive,
                  content=ARCHIVES, status=201, answer=dict[str, Any], errors=(400, 409, 413)),
            Route("POST", f"{one}/versions", self.add_version, Access.ADMIN,
                  "Upload the model's next version: a .zip or .tar.gz of its files",
                  description=archive, content=ARCHIVES, status=201, answer=dict[str, Any],
                  errors=(*model, 409, 413)),
            Route("GET", f"{one}/config", self.read_config, Access.ADMIN,
                  "The model's model.toml", media_type="application/toml", errors=(404,)),
            Route("PUT", f"{one}/config", self.write_config, Access.ADMIN,
                  "Replace the model's model.toml: validated (errors name the line), written "
                  "atomically, the model reloaded swap-when-ready",
                  content=("application/toml", "text/plain"), answer=dict[str, Any],
                  errors=(*model, 413)),
            Route("POST", f"{one}/publish", self._published(True), Access.ADMIN,
                  "Publish the model (the enabled = false line removed from model.toml)",
                  answer=dict[str, Any], errors=model),
            Route("POST", f"{one}/unpublish", self._published(False), Access.ADMIN,
                  "Unpublish the model: enabled = false in its model.toml, files kept",
                  answer=dict[str, Any], errors=model),
            Route("DELETE", one, self.delete_model, Access.ADMIN,
                  "Delete the model: its folder moved aside into <repository>/.deleted/",
                  answer=dict[str, Any], errors=model),
            Route("DELETE", f"{one}/versions/{{version}}", self.delete_version, Access.ADMIN,
                  "Delete one version: its folder moved aside into <repository>/.deleted/",
                  answer=dict[str, Any], errors=model),
            Route("GET", "/admin/audit", self.audit, Access.ADMIN,
                  "The audit log, newest first (?before=<id>&limit=)", answer=dict[str, Any],
                  errors=(400,), query=("before", "limit")),
        ]  # fmt: skip


def _spool(folder: Path) -> IO[bytes]:
    """Blocking: an anonymous file in the staging area (same disk as the repository)."""
    folder.mkdir(exist_ok=True)
    return tempfile.TemporaryFile(mode="w+b", dir=folder)


@contextlib.contextmanager
def _closing(spool: IO[bytes], root: Path) -> Iterator[IO[bytes]]:
    try:
        yield spool
    finally:
        spool.close()
        tidy(root)


def _edit(edit: Edit) -> dict[str, Any]:
    body: dict[str, Any] = {"model": edit.model, "changed": edit.changed}
    if edit.load_error:
        body["load_error"] = edit.load_error
    if edit.git is not None:
        body["git"] = {"work_tree": str(edit.git.top), "diff": edit.git.diff,
                       "error": edit.git.error}  # fmt: skip
    return body


def _number(text: str | None, name: str, low: int, high: int | None) -> int | None:
    if text is None:
        return None
    if not (text.isdigit() and text.isascii()) or int(text) < low or (high and int(text) > high):
        bound = f"{low} to {high}" if high else f"{low} or more"
        raise InvalidRequest(f"{name}={text!r} is not a whole number {bound}")
    return int(text)
