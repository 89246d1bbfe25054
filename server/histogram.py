"""A lock-free histogram for the hot path: one thread writes, a scrape reads.

prometheus-client's own Histogram takes a lock on every observation; here each histogram has
a single writer (the event loop, or one engine thread), so an observation is a bisect and two
additions, and the metrics collector sums the histograms of all instances when scraped.
"""

from __future__ import annotations

from bisect import bisect_left

#: Latency buckets in nanoseconds: 50 us .. 10 s.
LATENCY_NS: tuple[int, ...] = tuple(
    int(x * 1000)
    for x in (
        50, 100, 250, 500,
        1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 5_000_000, 10_000_000,
    )
)  # fmt: skip

#: Batch-size buckets (rows per execution).
BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Counts of observations per bucket (upper bounds inclusive) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[int, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0

    def observe(self, value: int) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def add(self, other: Histogram) -> None:
        """Accumulate `other` (same bounds) into this one: merging instances at scrape time."""
        for i, count in enumerate(other.counts):
            self.counts[i] += count
        self.total += other.total

    def cumulative(self) -> list[int]:
        """Prometheus-style cumulative counts, one per bound plus +Inf."""
        out, running = [], 0
        for count in self.counts:
            running += count
            out.append(running)
        return out
