"""The console's model pages: every model and version at a glance, and one model in full
(its model.toml, its schema, its versions with their statistics), with a reload.

They read what the DataPlane serves (the reconciler's models, the counters `/metrics` and the
statistics extension read); a reload goes through the DataPlane's load, the same as
``POST /v2/repository/models/{m}/load``.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import Response

from ..counters import LATENCY_NS, sum_instances
from ..dataplane import DataPlane
from ..errors import CinferError, Forbidden, InvalidRequest
from ..manage.curator import Actor, Curator
from ..models import Model, ModelState, ModelVersion
from ..repository import version_folders
from .live import quantile
from .web import Visitor, Web

UNPUBLISHED = "unpublished:"
"""How the reconciler's reason for an ``enabled = false`` model begins."""
STATES = tuple(state.value for state in ModelState if state is not ModelState.UNKNOWN)


@dataclass(frozen=True)
class Row:
    """One model version as the models page lists it."""

    model: str
    version: str
    state: str
    reason: str
    engine: str
    device: str
    instances: int
    max_batch: int
    requests: int
    p99_ms: float | None


def version_row(name: str, version: ModelVersion) -> Row:
    stats = version.requests
    config = version.config
    return Row(
        model=name,
        version=str(version.version),
        state=version.state.value,
        reason=version.reason,
        engine=config.engine,
        device=config.device,
        instances=version.pool.instances if version.pool is not None else 0,
        max_batch=config.max_batch_size,
        requests=stats.success + stats.failure,
        p99_ms=quantile(stats.latency.counts, 0.99),
    )


def cache_line(version: ModelVersion) -> str:
    """The response cache's hit rate for a version's page ([cache] enabled in model.toml)."""
    cache = version.cache
    looked = cache.hits + cache.misses
    if not looked:
        return "on, no lookup yet"
    rate = f"{100 * cache.hits / looked:.1f}% hit rate ({cache.hits} of {looked} lookups)"
    held = f", {cache.entries} entries, {cache.bytes / 1024:.1f} KiB" if cache.entries else ""
    failed = f", {cache.errors} failed (served by the engine)" if cache.errors else ""
    return rate + held + failed


def model_rows(name: str, model: Model) -> list[Row]:
    versions = [*model.versions.values(), *model.loading.values()]
    if not versions:  # model.toml unreadable, or no version folder
        return [Row(name, "", ModelState.UNAVAILABLE.value, model.reason, "", "", 0, 0, 0, None)]
    return [version_row(name, v) for v in sorted(versions, key=lambda v: v.version)]


# -- model.toml, highlighted -------------------------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<comment>\#.*$)
      | (?P<table>^\s*\[\[?[^\]]*\]\]?)
      | (?P<key>^\s*[A-Za-z0-9_.\-"]+(?=\s*=))
      | (?P<string>"(?:[^"\\]|\\.)*"|'[^']*')
      | (?P<number>\b(?:true|false|[+-]?\d[\d_]*(?:\.\d+)?(?:[eE][+-]?\d+)?)\b)""",
    re.VERBOSE | re.MULTILINE,
)


def highlight_toml(text: str) -> Markup:
    """`text` escaped, its comments, tables, keys, strings and numbers in spans."""
    out, last = [], 0
    for found in _TOKEN.finditer(text):
        kind = found.lastgroup
        out.append(str(escape(text[last : found.start()])))
        out.append(f'<span class="toml-{kind}">{escape(found.group())}</span>')
        last = found.end()
    out.append(str(escape(text[last:])))
    return Markup("".join(out))


def latency_rows(counts: list[int]) -> list[tuple[str, int]]:
    """(bucket label, requests) for the non-empty latency buckets."""
    rows: list[tuple[str, int]] = []
    lower = 0
    for bound, count in zip((*LATENCY_NS, None), counts, strict=True):
        if count:
            label = f"≤ {bound / 1e6:g} ms" if bound is not None else f"> {lower / 1e6:g} ms"
            rows.append((label, count))
        if bound is not None:
            lower = bound
    return rows


class ModelPages:
    """GET /console/models, GET /console/models/{model}, POST .../reload."""

    def __init__(self, web: Web, dataplane: DataPlane, curator: Curator) -> None:
        self.web = web
        self.dataplane = dataplane
        self.curator = curator

    async def listing(self, request: Request, visitor: Visitor) -> Response:
        name = request.query_params.get("name", "").strip()
        state = request.query_params.get("state", "")
        rows: list[Row] = []
        for model_name, model in sorted(self.dataplane.reconciler.models.items()):
            if name and name.lower() not in model_name.lower():
                continue
            rows.extend(r for r in model_rows(model_name, model) if not state or r.state == state)
        return self.web.render(
            request, "models.html", visitor,
            page="models", rows=rows, name=name, state=state, states=STATES,
            deleted=request.query_params.get("deleted", ""),
        )  # fmt: skip

    async def detail(self, request: Request, visitor: Visitor) -> Response:
        name = request.path_params["model"]
        if name not in self.dataplane.reconciler.models:
            # 404 unless its folder is there: a model just uploaded is, before the
            # reconciler has read it.
            self.curator.folder(name)
        model = self.dataplane.reconciler.models.get(name) or Model(name)
        folder = self.dataplane.reconciler.root / name
        toml = await asyncio.to_thread(_read_text, folder / "model.toml")
        versions = []
        for version in sorted(model.versions.values(), key=lambda v: v.version):
            totals = sum_instances(version.instance_stats)
            batches = sorted((size, b.count) for size, b in totals.batches.items())
            versions.append(
                {
                    "row": version_row(name, version),
                    "success": version.requests.success,
                    "failures": {k: v for k, v in version.requests.failures.items() if v},
                    "latency": latency_rows(version.requests.latency.counts),
                    "p50_ms": quantile(version.requests.latency.counts, 0.5),
                    "batches": batches,
                    "executions": totals.executions,
                    "cache": cache_line(version) if version.config.cache.enabled else None,
                    "inputs": version.config.inputs or (),
                    "outputs": version.config.outputs or (),
                }
            )
        return self.web.render(
            request, "model.html", visitor,
            page="models", name=name, model=model, versions=versions,
            toml=highlight_toml(toml) if toml is not None else None,
            flash=request.query_params.get("done", ""),
            moved_to=request.query_params.get("where", ""),
            follow=_number(request.query_params.get("follow", "")),
            on_disk=await asyncio.to_thread(_on_disk, folder),
            unpublished=unpublished(model),
        )  # fmt: skip

    async def reload(self, request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        if not visitor.admin:
            raise Forbidden("a viewer account cannot reload models")
        self.web.check_csrf(visitor, form.get("csrf") or request.headers.get("x-csrf-token"))
        name = request.path_params["model"]
        address = self.web.address(request)
        try:
            await self.dataplane.load_model(name, None)
        except CinferError as exc:
            await self.web.accounts.audit(
                visitor.account.username, "model.reload", name, f"failed: {exc.message}", address
            )
            raise
        await self.web.accounts.audit(visitor.account.username, "model.reload", name, "", address)
        return self.web.redirect(request, f"/models/{quote(name)}?done=reloaded")

    async def set_published(
        self, request: Request, visitor: Visitor, form: dict[str, str], published: bool
    ) -> Response:
        """Publish or unpublish: ``enabled`` in model.toml, then a reload (the Curator's)."""
        verb = "publish" if published else "unpublish"
        if not visitor.admin:
            raise Forbidden(f"a viewer account cannot {verb} models")
        self.web.check_csrf(visitor, form.get("csrf") or request.headers.get("x-csrf-token"))
        name = request.path_params["model"]
        actor = Actor(visitor.account.username, self.web.address(request))
        edit = await self.curator.set_published(name, published, actor)
        if edit.load_error:
            raise InvalidRequest(edit.load_error)
        return self.web.redirect(request, f"/models/{quote(name)}?done={verb}ed")


def unpublished(model: Model) -> bool:
    return model.reason.startswith(UNPUBLISHED)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() and text.isascii() else None


def _on_disk(folder: Path) -> list[int]:
    """The version folders on disk, newest first (what the delete form offers)."""
    try:
        return sorted(version_folders(folder), reverse=True)
    except OSError:
        return []
