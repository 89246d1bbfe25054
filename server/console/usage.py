"""The console's usage page: the per-request log (time, token, model, version, status,
latency, client address), filtered by token, model, status and days, 100 rows a page, and
the same selection as CSV.

It reads the usage log the guard writes (auth/store.py), after writing what is still in
memory, so the page includes the request made a moment ago. Without API tokens on there is
no usage log, and the page says so.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..auth.guard import Guard
from ..auth.store import Database
from ..errors import InvalidRequest
from ..http.admin import day_start
from .web import Visitor, Web

PAGE = 100
CSV_ROWS = 100_000
"""Rows one CSV export holds at most (newest first)."""
CSV_BATCH = 5_000
COLUMNS = ("id", "time", "token_id", "token", "model", "version", "status", "latency_ms", "client")


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}Z"


class UsagePages:
    """GET /console/usage and GET /console/usage.csv."""

    def __init__(self, web: Web, database: Database, guard: Guard | None) -> None:
        self.web = web
        self.database = database
        self.guard = guard

    def _filters(self, request: Request) -> dict[str, Any]:
        query = request.query_params
        now = self.database.clock()
        days = self.guard.settings.log_retention_days if self.guard is not None else 30
        since_text, until_text = query.get("since", ""), query.get("until", "")
        status_text = query.get("status", "").strip().lower()
        status = None
        if status_text:
            if status_text.endswith("xx") and status_text[:1].isdigit() and len(status_text) == 3:
                status = int(status_text[0])
            elif status_text.isdigit() and len(status_text) == 3:
                status = int(status_text)
            else:
                raise InvalidRequest(f"status={status_text!r} is a code (404) or a class (4xx)")
        before = query.get("before", "")
        if before and not before.isdigit():
            raise InvalidRequest(f"before={before!r} is not a row id")
        return {
            "since": day_start(since_text, "since") if since_text else now - days * 86400,
            "until": day_start(until_text, "until") + 86400 if until_text else now + 86400,
            "token": query.get("token", "").strip() or None,
            "model": query.get("model", "").strip() or None,
            "status": status,
            "before": int(before) if before else None,
            "shown": {
                "token": query.get("token", ""),
                "model": query.get("model", ""),
                "status": status_text,
                "since": since_text,
                "until": until_text,
            },
        }

    async def listing(self, request: Request, visitor: Visitor) -> Response:
        filters = self._filters(request)
        shown = filters.pop("shown")
        rows: list[tuple[Any, ...]] = []
        if self.guard is not None:
            await self.guard.flush()
            rows = await self.database.log_rows(**filters, limit=PAGE + 1)
        query = urlencode({k: v for k, v in shown.items() if v})
        return self.web.render(
            request, "usage.html", visitor,
            page="usage", rows=[_shown(r) for r in rows[:PAGE]], more=len(rows) > PAGE,
            filters=shown, query=query, enforced=self.guard is not None,
        )  # fmt: skip

    async def export(self, request: Request, visitor: Visitor) -> Response:
        filters = self._filters(request)
        filters.pop("shown")
        if self.guard is not None:
            await self.guard.flush()

        async def lines() -> AsyncIterator[bytes]:
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(COLUMNS)
            yield out.getvalue().encode()
            if self.guard is None:
                return
            left, before = CSV_ROWS, filters.pop("before")
            while left > 0:
                batch = await self.database.log_rows(
                    **filters, before=before, limit=min(CSV_BATCH, left)
                )
                if not batch:
                    return
                out.seek(0)
                out.truncate()
                for row in batch:
                    writer.writerow([row[0], _iso(row[1]), *row[2:7], round(row[7], 3), row[8]])
                yield out.getvalue().encode()
                left -= len(batch)
                before = batch[-1][0]

        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return StreamingResponse(
            lines(),
            media_type="text/csv; charset=utf-8",
            headers={
                "content-disposition": f'attachment; filename="cinfer-usage-{stamp}.csv"',
                "cache-control": "no-store",
            },
        )


def _shown(row: tuple[Any, ...]) -> dict[str, Any]:
    row_id, stamp, token_id, name, model, version, status, latency, client = row
    return {
        "id": row_id,
        "time": stamp,
        "token": name or token_id or "",
        "model": model or "",
        "version": version or "",
        "status": status,
        "latency_ms": round(latency, 2),
        "client": client,
    }
