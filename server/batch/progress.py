"""What a run shows while it runs, and its summary. On a terminal, one line redrawn in place:

    [##########..........]  51%  10,240/20,000 rows  5,120 rows/s  ETA 1.9s  3 errors

When stderr is not a terminal (a log file, cron, a Kubernetes pod), the same figures as a
plain line every `interval` seconds, so the log shows the run's pace without a line per row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TextIO

BAR = 20
REDRAW_S = 0.1


@dataclass
class Summary:
    """How a run went."""

    total: int
    """Rows in the input."""
    resumed: int
    """Rows the output already held when the run began."""
    written: int = 0
    """Rows this run wrote."""
    errors: int = 0
    """... of which error rows."""
    seconds: float = 0.0
    stopped: str | None = None
    """Why the run stopped before the end (interrupted, the model or server failed)."""

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def lines(self, output: str) -> list[str]:
        done = self.resumed + self.written
        head = f"{self.written:,} rows in {_duration(self.seconds)}"
        if self.written:
            head += f" ({self.rate:,.0f} rows/s)"
        head += f"; error rows: {self.errors:,}"
        lines = [head]
        if self.resumed:
            lines.append(f"resumed after the {self.resumed:,} rows {output} held")
        if self.stopped is None:
            lines.append(f"done: {output} holds all {self.total:,} rows")
        else:
            lines.append(
                f"stopped ({self.stopped}): {output} holds rows 0 to {done - 1:,} of "
                f"{self.total:,}; run the same command again to resume at row {done:,}"
            )
        return lines


class Progress:
    """Draws the run's progress on `stream`: a bar on a terminal, else periodic lines."""

    def __init__(self, stream: TextIO, total: int, resumed: int, interval: float = 10.0) -> None:
        self.stream = stream
        self.total = total
        self.resumed = resumed
        self.interval = interval
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._shown = self.started if not self.tty else 0.0
        self._drawn = False

    def update(self, done: int, errors: int, force: bool = False) -> None:
        """`done` rows answered by this run so far, `errors` of them error rows; `force`: the
        last figures, drawn on a terminal (elsewhere the summary follows)."""
        if force and not self.tty:
            return
        now = time.monotonic()
        wait = REDRAW_S if self.tty else self.interval
        if not force and now - self._shown < wait:
            return
        self._shown = now
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        total, finished = self.total, self.resumed + done
        left = (total - finished) / rate if rate > 0 else None
        figures = (
            f"{finished:,}/{total:,} rows  {rate:,.0f} rows/s  "
            f"ETA {_duration(left) if left is not None else '?'}  {errors:,} errors"
        )
        share = finished / total if total else 1.0
        if self.tty:
            filled = int(BAR * share)
            bar = "#" * filled + "." * (BAR - filled)
            self.stream.write(f"\r[{bar}] {int(share * 100):3d}%  {figures}\x1b[K")
            self._drawn = True
        else:
            self.stream.write(f"cinfer batch: {int(share * 100)}%  {figures}\n")
        self.stream.flush()

    def finish(self, summary: Summary, output: str) -> None:
        if self._drawn:
            self.stream.write("\n")
        for line in summary.lines(output):
            self.stream.write(f"cinfer batch: {line}\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
