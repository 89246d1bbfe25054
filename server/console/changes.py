"""The console's repository changes: upload a model or its next version, edit model.toml
(a form, or the file itself), delete a version or the model, and follow a new version until
it is READY. The work is the Curator's (manage/curator.py), the same as ``/admin/models``'s;
these pages read the forms, say what happened and send each change to the audit log as the
signed-in account.
"""

from __future__ import annotations

import asyncio
import tomllib
from typing import Any
from urllib.parse import quote

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import CinferError, Forbidden, InvalidRequest, PayloadTooLarge
from ..manage import toml_text
from ..manage.curator import Actor, Curator
from ..manage.git import work_tree
from ..model_config import ModelConfig
from ..models import Model, ModelState
from .web import Visitor, Web, read_form

FINAL = (ModelState.READY, ModelState.UNAVAILABLE)
STOP_POLLING = 286
"""The status that tells htmx to stop polling (the followed version is READY or failed)."""
FORM_SLACK = 64 * 1024
"""What a multipart upload form may hold beside the archive (its fields and boundaries)."""
POLICIES = ("latest", "all", "specific")
MAX_TOML = 1 << 20
"""The largest model.toml the edit form takes."""


class ChangePages:
    """GET/POST /console/upload, .../models/{m}/edit, POST .../delete, GET .../state."""

    def __init__(self, web: Web, curator: Curator) -> None:
        self.web = web
        self.curator = curator

    def _admin(self, request: Request, visitor: Visitor, form: Any, what: str) -> Actor:
        if not visitor.admin:
            raise Forbidden(f"a viewer account cannot {what}")
        csrf = form.get("csrf") if form is not None else None
        self.web.check_csrf(visitor, csrf or request.headers.get("x-csrf-token"))
        return Actor(visitor.account.username, self.web.address(request))

    # -- upload -------------------------------------------------------------------------------

    async def upload_page(self, request: Request, visitor: Visitor) -> Response:
        query = request.query_params
        return self._upload_form(
            request, visitor, 200, kind=query.get("kind", "model"), model=query.get("model", "")
        )

    def _upload_form(
        self, request: Request, visitor: Visitor, status: int, error: str = "", **values: str
    ) -> Response:
        models = sorted(self.curator.dataplane.reconciler.models)
        return self.web.render(
            request, "upload.html", visitor, status, page="models", error=error,
            models=models, max_mb=self.curator.settings.max_upload_mb, **values,
        )  # fmt: skip

    async def upload(self, request: Request, visitor: Visitor) -> Response:
        """The multipart form: kind (model | version), model, archive, csrf. Answers a page,
        or JSON ({"location"} or {"error"}) to the page's script, which shows progress."""
        scripted = request.headers.get("x-requested-with") == "cinfer-console"
        kind, name = "model", ""
        try:
            if "content-length" not in request.headers:
                raise InvalidRequest("an upload needs a Content-Length (send it as a form)")
            limit = self.curator.max_upload_bytes + FORM_SLACK
            if int(request.headers["content-length"]) > limit:
                raise PayloadTooLarge(
                    f"the archive is over {self.curator.settings.max_upload_mb} MB "
                    "([repository] max_upload_mb)"
                )
            form = await read_form(request, limit, "an upload", files=1)
            try:
                kind = str(form.get("kind", "model"))
                name = str(form.get("model", "")).strip()
                actor = self._admin(request, visitor, form, "upload models")
                archive = form.get("archive")
                if kind not in ("model", "version"):
                    raise InvalidRequest(f"kind {kind!r}: upload a new model or a version")
                if not isinstance(archive, UploadFile) or not archive.filename:
                    raise InvalidRequest("choose a .zip or .tar.gz archive to upload")
                if kind == "version":
                    done = await self.curator.add_version(name, archive.file, actor)
                else:
                    done = await self.curator.add_model(name, archive.file, actor)
            finally:
                await form.close()  # the spooled archive's file
        except CinferError as exc:
            if exc.status_code >= 500:
                raise
            if scripted:
                return JSONResponse({"error": exc.message}, exc.status_code)
            return self._upload_form(
                request, visitor, exc.status_code, exc.message, kind=kind, model=name
            )
        path = f"/models/{quote(done.model)}?follow={done.versions[-1]}"
        if scripted:
            return JSONResponse({"location": self.web.base(request) + path}, 201)
        return self.web.redirect(request, path)

    async def state(self, request: Request, visitor: Visitor) -> Response:
        """The followed version's state, as the fragment the model page polls."""
        name = request.path_params["model"]
        number = request.path_params["version"]
        model = self.curator.dataplane.reconciler.models.get(name)
        version = None
        if model is not None and number.isdigit():
            version = model.loading.get(int(number)) or model.versions.get(int(number))
        response = self.web.render(
            request, "follow.html", visitor, model=name, number=number, followed=version,
            reason=model.reason if model is not None else "",
        )  # fmt: skip
        if version is not None and version.state in FINAL:
            response.status_code = STOP_POLLING
        elif model is not None and model.reason and version is None:
            response.status_code = STOP_POLLING  # the model itself failed (model.toml)
        return response

    # -- edit -----------------------------------------------------------------------------------

    async def edit_page(self, request: Request, visitor: Visitor) -> Response:
        name = request.path_params["model"]
        text = await self.curator.read_config(name, missing="")
        return await self._edit_form(
            request, visitor, name, text, 200, done=request.query_params.get("done", "")
        )

    async def _edit_form(
        self, request: Request, visitor: Visitor, name: str, text: str, status: int,
        error: str = "", done: str = "", submitted: str | None = None,
    ) -> Response:  # fmt: skip
        folder = self.curator.folder(name)
        try:
            config: ModelConfig | None = ModelConfig.model_validate(tomllib.loads(text))
        except (tomllib.TOMLDecodeError, ValueError):
            config = None  # the form needs a valid file; the raw editor shows why it is not
        git = await asyncio.to_thread(work_tree, folder)
        model = self.curator.dataplane.reconciler.models.get(name) or Model(name)
        return self.web.render(
            request, "edit.html", visitor, status, page="models", name=name, model=model,
            text=submitted if submitted is not None else text, config=config, git=git,
            error=error, done=done, policies=POLICIES,
        )  # fmt: skip

    async def edit(self, request: Request, visitor: Visitor) -> Response:
        name = request.path_params["model"]
        form = await read_form(request, MAX_TOML, "the edit form")
        actor = self._admin(request, visitor, form, "edit models")
        current = await self.curator.read_config(name, missing="")
        submitted = str(form.get("toml", "")) if form.get("mode") == "raw" else None
        try:
            text = submitted if submitted is not None else _with_form(current, form)
            edit = await self.curator.write_config(name, text, actor)
        except InvalidRequest as exc:
            return await self._edit_form(
                request, visitor, name, current, 400, exc.message, submitted=submitted
            )
        done = "failed" if edit.load_error else ("saved" if edit.changed else "unchanged")
        return self.web.redirect(request, f"/models/{quote(name)}/edit?done={done}")

    # -- delete ---------------------------------------------------------------------------------

    async def delete(self, request: Request, visitor: Visitor) -> Response:
        name = request.path_params["model"]
        form = await read_form(request, 64 * 1024, "the delete form")
        actor = self._admin(request, visitor, form, "delete models")
        what = str(form.get("target", ""))
        self.curator.folder(name)
        if str(form.get("confirm", "")).strip() != name:
            raise InvalidRequest(f"type the model's name, {name}, to confirm: nothing was deleted")
        if what == "model":
            edit = await self.curator.delete(name, None, actor)
            return self.web.redirect(request, f"/models?deleted={quote(edit.moved_to)}")
        if not (what.isdigit() and what.isascii()):
            raise InvalidRequest(f"choose the model or one of its versions, not {what!r}")
        edit = await self.curator.delete(name, int(what), actor)
        return self.web.redirect(
            request, f"/models/{quote(name)}?done=deleted&where={quote(edit.moved_to)}"
        )


def _with_form(current: str, form: Any) -> str:
    """The current model.toml with the edit form's settings (toml_text.Changes)."""
    batching = None
    if form.get("batching"):
        batching = {
            "max_queue_delay_us": _whole(form, "max_queue_delay_us", 0) or None,
            "preferred_batch_sizes": _whole_list(form, "preferred_batch_sizes") or None,
            "max_queue_size": _whole(form, "max_queue_size", 1024),
            "timeout_us": _whole(form, "timeout_us", 0) or None,
        }
        if batching["max_queue_size"] == 1024:
            batching["max_queue_size"] = None
    policy = str(form.get("policy", "latest"))
    versions: dict[str, Any]
    if policy == "all":
        versions = {"all": True}
    elif policy == "specific":
        versions = {"specific": _whole_list(form, "specific")}
    elif policy == "latest":
        versions = {"latest": _whole(form, "latest", 1)}
    else:
        raise InvalidRequest(f"version policy {policy!r}: choose latest, all or specific")
    changes = toml_text.Changes(
        description=str(form.get("description", "")).strip(),
        instances=_whole(form, "instances", 1),
        max_batch_size=_whole(form, "max_batch_size", 0),
        batching=batching,
        version_policy=versions,
    )
    try:
        return toml_text.with_settings(current, changes)
    except CinferError as exc:
        raise InvalidRequest(exc.message) from exc


def _whole(form: Any, key: str, default: int) -> int:
    text = str(form.get(key, "")).strip()
    if not text:
        return default
    if not (text.isdigit() and text.isascii()):
        raise InvalidRequest(f"{key.replace('_', ' ')}: {text!r} is not a whole number")
    return int(text)


def _whole_list(form: Any, key: str) -> list[int]:
    items = [i.strip() for i in str(form.get(key, "")).split(",") if i.strip()]
    bad = [i for i in items if not (i.isdigit() and i.isascii())]
    if bad:
        raise InvalidRequest(f"{key.replace('_', ' ')}: {bad[0]!r} is not a whole number")
    return [int(i) for i in items]
