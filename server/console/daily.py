"""Requests per UTC day, as the series of the tokens pages' charts (console.js draws them).

The last `DAYS` days, today included, from the usage log's rows (`Database.usage`: one row per
day, token and model). Every series has a value for every day, 0 where the log has none, so
a quiet day is drawn as 0, not skipped. On the tokens list: one series per token, the
`BUSIEST` tokens by requests over the window and the rest summed as "other"; on a token's
page: its requests and its errors.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

DAYS = 30
BUSIEST = 8
OTHER = "other"

Chart = dict[str, Any]
"""``{"days": ["2026-11-01", ...], "x": [UTC midnights, s], "series": [{"label", "values",
"total"}], "total": requests in the window}``: what the page's JSON block holds."""


def window(now: float, days: int = DAYS) -> tuple[list[str], float, float]:
    """The `days` UTC days ending with today: their dates, and [since, until) in seconds."""
    today = datetime.fromtimestamp(now, UTC).date()
    dates = [today - timedelta(days=n) for n in range(days - 1, -1, -1)]
    since = float(calendar.timegm(dates[0].timetuple()))
    until = float(calendar.timegm(today.timetuple())) + 86400
    return [d.isoformat() for d in dates], since, until


def _chart(days: list[str], series: Iterable[tuple[str, Mapping[str, int]]]) -> Chart:
    shown = []
    for label, per_day in series:
        values = [per_day.get(day, 0) for day in days]
        shown.append({"label": label, "values": values, "total": sum(values)})
    return {
        "days": days,
        "x": [calendar.timegm(datetime.fromisoformat(day).timetuple()) for day in days],
        "series": shown,
        "total": sum(s["total"] for s in shown),
    }


def _label(row: Mapping[str, Any]) -> str:
    if row["token_name"]:
        return str(row["token_name"])
    if row["token_id"]:
        return f"deleted {row['token_id']}"  # its rows outlive it until they age out
    return "no token"


def per_token(rows: Iterable[Mapping[str, Any]], days: list[str]) -> Chart:
    """Requests per day of each of the `BUSIEST` tokens, and of the others together."""
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        per_day = counts.setdefault(_label(row), {})
        per_day[row["day"]] = per_day.get(row["day"], 0) + row["requests"]
    ranked = sorted(counts.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    series = ranked[:BUSIEST]
    if len(ranked) > BUSIEST:
        other: dict[str, int] = {}
        for _, per_day in ranked[BUSIEST:]:
            for day, n in per_day.items():
                other[day] = other.get(day, 0) + n
        series.append((OTHER, other))
    return _chart(days, series)


def requests_and_errors(rows: Iterable[Mapping[str, Any]], days: list[str]) -> Chart:
    """One token's requests and errors (status 400 and above) per day, every model summed."""
    requests: dict[str, int] = {}
    errors: dict[str, int] = {}
    for row in rows:
        requests[row["day"]] = requests.get(row["day"], 0) + row["requests"]
        errors[row["day"]] = errors.get(row["day"], 0) + (row["errors"] or 0)
    chart = _chart(days, [("requests", requests), ("errors", errors)])
    chart["total"] = chart["series"][0]["total"]  # errors are requests too, counted once
    return chart
