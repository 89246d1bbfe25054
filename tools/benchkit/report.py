"""What the user sees: live progress on stderr, the final table, the CSV and the plot.

rich (the `bench` extra) draws the progress and the table when it is installed and stderr is
a terminal; without it, or in a log, each window is one plain line.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .measure import STABILITY_WINDOWS, Level, Totals, Window
from .target import BenchError

try:
    import rich.console
    import rich.progress
    import rich.table
except ImportError:  # the plain fallback below
    rich = None  # type: ignore[assignment]

CPU_SATURATED = 0.9
"""A worker using this share of a core is likely the limit, not the server."""
DELAYED_WARNING = 0.01


def mode_label(mode: str) -> str:
    return "Concurrency" if mode == "concurrency" else "Request Rate"


def level_name(mode: str, value: float) -> str:
    return f"concurrency {value:g}" if mode == "concurrency" else f"request rate {value:g}/s"


def describe(window: Window, percentile: int | None) -> str:
    which = f"p{percentile}" if percentile else "avg"
    text = (
        f"{window.throughput:,.1f} infer/s, {which} {window.latency_ns(percentile) / 1000:,.0f} us"
    )
    if window.error_count:
        text += f", {window.error_count} errors"
    return text


class Progress:
    """Live status of the run on stderr."""

    def __init__(self, mode: str, max_windows: int, percentile: int | None) -> None:
        self.mode = mode
        self.max_windows = max_windows
        self.percentile = percentile
        self.live: Any = None
        self.task: Any = None
        if rich is not None and sys.stderr.isatty():
            self.live = rich.progress.Progress(
                rich.progress.SpinnerColumn(),
                rich.progress.TextColumn("{task.description:<24}"),
                rich.progress.BarColumn(bar_width=20),
                rich.progress.TextColumn("{task.fields[status]}"),
                console=rich.console.Console(stderr=True),
            )
            self.live.start()

    def start_level(self, value: float) -> None:
        name = level_name(self.mode, value)
        if self.live is not None:
            self.task = self.live.add_task(name, total=self.max_windows, status="window 1")
        else:
            print(f"{name}:", file=sys.stderr, flush=True)

    def tick(self, windows_done: float) -> None:
        if self.live is not None:
            self.live.update(self.task, completed=windows_done)

    def window(self, index: int, window: Window, stable: bool) -> None:
        text = f"window {index}/{self.max_windows}: {describe(window, self.percentile)}"
        if self.live is not None:
            self.live.update(self.task, completed=index, status=text)
        else:
            print(f"  {text}{'  (stable)' if stable else ''}", file=sys.stderr, flush=True)

    def end_level(self, level: Level) -> None:
        if self.live is not None:
            verdict = "stable" if level.stable else "NOT stable"
            self.live.update(
                self.task,
                completed=self.max_windows,
                status=f"{verdict} after {len(level.windows)} windows: "
                f"{level.throughput:,.1f} infer/s",
            )

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def _us(value: float) -> str:
    return f"{value:,.0f}"


def table_rows(
    mode: str,
    levels: Sequence[Level],
    percentile: int | None,
    stats: bool,
    images: int | None = None,
) -> tuple[list[str], list[list[str]]]:
    """The final table's header and rows (strings); `images`: files per request (--images)."""
    keys = ["avg", "p50", "p90", "p95", "p99"]
    if percentile and f"p{percentile}" not in keys:
        keys.append(f"p{percentile}")
    header = [mode_label(mode), "infer/s", "bytes/req"]
    if images:
        header.append("bytes/image")
    header += [f"{k} us" for k in keys]
    if stats:
        header += ["server queue us", "server compute us"]
    header += ["client CPU", "errors"]
    if mode == "rate":
        header.append("delayed")
    header.append("stable")
    rows = []
    for level in levels:
        row = [f"{level.value:g}", f"{level.throughput:,.1f}", f"{level.request_bytes:,.0f}"]
        if images:
            row.append(f"{level.request_bytes / images:,.0f}")
        row += [_us(level.latency(k)) for k in keys]
        if stats:
            b = level.breakdown_us()
            compute = b["Server Compute Input"] + b["Server Compute Infer"]
            row += [_us(b["Server Queue"]), _us(compute + b["Server Compute Output"])]
        row += [f"{sum(level.cpu):.0%}", str(level.error_count)]
        if mode == "rate":
            row.append(f"{level.delayed / level.sent:.1%}" if level.sent else "-")
        row.append("yes" if level.stable else "NO")
        rows.append(row)
    return header, rows


def print_table(
    mode: str,
    levels: Sequence[Level],
    percentile: int | None,
    stats: bool,
    out: TextIO,
    images: int | None = None,
) -> None:
    header, rows = table_rows(mode, levels, percentile, stats, images)
    if rich is not None and out.isatty():
        table = rich.table.Table(*header)
        for column in table.columns[1:]:
            column.justify = "right"
        for row in rows:
            table.add_row(*row)
        rich.console.Console(file=out).print(table)
        return
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(header)]
    for line in [header, *rows]:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
        print("  ".join(cells), file=out)


def warnings(mode: str, levels: Sequence[Level], interval_ms: int) -> list[str]:
    """What the user must know to trust (or not) the numbers."""
    lines = []
    cores = os.cpu_count() or 1
    for level in levels:
        name = level_name(mode, level.value)
        if len(level.windows) < STABILITY_WINDOWS:
            lines.append(
                f"{name}: stopped after {len(level.windows)} window(s), too few to judge "
                "stability; the figures are those windows'."
            )
        elif not level.stable:
            lines.append(
                f"{name}: not stable within {len(level.windows)} windows (throughput or latency "
                f"moved more than the tolerance between windows); the figures pool the last "
                f"three. Try a longer --measurement-interval than {interval_ms} ms."
            )
        busiest = max(level.cpu, default=0.0)
        if busiest >= CPU_SATURATED:
            lines.append(
                f"{name}: a load worker used {busiest:.0%} of a core: the client, not the "
                "server, may be what limits throughput; try more --workers."
            )
        elif sum(level.cpu) >= CPU_SATURATED * cores:
            lines.append(
                f"{name}: the load workers used {sum(level.cpu):.0%} of a core across "
                f"{len(level.cpu)} processes, on a machine with {cores} cores: the client "
                "competes with the server for CPU."
            )
        if mode == "rate" and level.sent and level.delayed / level.sent >= DELAYED_WARNING:
            lines.append(
                f"{name}: {level.delayed / level.sent:.1%} of the requests went out late (the "
                "timer was behind, or every connection was busy): the client could not keep "
                "the schedule, so the server saw less than the target rate."
            )
    return lines


def totals_line(levels: Sequence[Level], batch: int, images: int | None, checked: int) -> str:
    """Every request of the run, beside the `checked` ones sent before measuring: what the
    server's own counts (its statistics) should have gone up by."""
    total = sum((level.totals for level in levels), Totals())
    text = (
        f"sent {total.sent:,} requests, {total.succeeded:,} succeeded "
        f"({total.succeeded * batch:,} inferences); {total.body_bytes:,} body bytes"
    )
    if total.sent:
        text += f", {total.body_bytes / total.sent:,.1f} per request"
        if images:
            text += f", {total.body_bytes / total.sent / images:,.1f} per image"
    return text + f"; and {checked:,} before measuring, each distinct request once"


def error_lines(levels: Sequence[Level], mode: str) -> list[str]:
    lines = []
    for level in levels:
        for key, (count, message) in sorted(level.errors.items()):
            lines.append(f"{level_name(mode, level.value)}: {key} x {count}; first: {message}")
    return lines


CSV_COLUMNS = (
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "Avg latency",
    "request/response",
    "response wait",
)
"""perf_analyzer's columns after the level, in its order."""
BYTES_COLUMNS = ("Avg Request Bytes", "Avg Image Bytes")
"""After them, as perf_analyzer's --verbose-csv adds its own: the mean body bytes per request,
and per image file with --images."""


def write_csv(path: Path, mode: str, levels: Sequence[Level], images: int | None = None) -> None:
    """perf_analyzer's CSV layout (microseconds; rows by increasing throughput, as it sorts),
    then the bytes on the wire."""
    extra = BYTES_COLUMNS if images else BYTES_COLUMNS[:1]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([mode_label(mode), *CSV_COLUMNS, *extra])
        for level in sorted(levels, key=lambda lv: lv.throughput):
            breakdown = level.breakdown_us()
            sizes = [round(level.request_bytes)]
            if images:
                sizes.append(round(level.request_bytes / images))
            writer.writerow(
                [
                    f"{level.value:g}",
                    f"{level.throughput:.1f}",
                    *(int(breakdown[c]) for c in CSV_COLUMNS[1:]),
                    *sizes,
                ]
            )


def check_plotting() -> None:
    """BenchError now, before the run, when --plot cannot work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BenchError(
            "--plot needs matplotlib, which is not installed: pip install matplotlib "
            "(or the project's extra: pip install -e '.[plot]')"
        ) from None


def plot(path: Path, mode: str, levels: Sequence[Level], title: str) -> None:
    """A PNG of latency (avg, p50, p90, p99) against throughput, one point per level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = [lv for lv in levels if lv.latency_us]
    x = [lv.throughput for lv in ordered]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for key, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:"), ("avg", "x-")):
        ax.plot(x, [lv.latency(key) / 1000 for lv in ordered], style, label=key)
    for lv in ordered:
        ax.annotate(
            f"{lv.value:g}",
            (lv.throughput, lv.latency("p50") / 1000),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xlabel("throughput (infer/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{title} — points labelled by {mode_label(mode).lower()}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
