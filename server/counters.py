"""What the server counts on the request path; statistics.py and prometheus.py only read it.

Counting costs the hot path a few integer additions and `perf_counter_ns` calls: the event loop
counts request outcomes in each version's `RequestStats` (dataplane.py), every engine thread
counts its own executions in its `InstanceStats` (scheduler.py). Each object has one writer, so
nothing is locked: a reader sums the instances' counters (`sum_instances`) and may see one
request counted in one field and not yet in the next, never a torn integer.

This module is at the bottom of the import graph: it imports only `errors`, so the scheduler,
the models and the readers can all depend on it without depending on each other.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import CinferError, EngineError, Unavailable

#: Triton's failure reasons (the `reason` label of nv_inference_request_failure).
REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")

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


def failure_reason(error: BaseException | None) -> str:
    """Triton's reason label for a failed request (None: the client went away)."""
    if error is None:
        return "CANCELED"
    if isinstance(error, Unavailable):
        return "REJECTED"
    if isinstance(error, EngineError) or not isinstance(error, CinferError):
        return "BACKEND"
    return "OTHER"


class Histogram:
    """Counts of observations per bucket (upper bounds inclusive) and their sum.

    prometheus-client's own Histogram takes a lock on every observation; this one has a single
    writer (the event loop, or one engine thread), so an observation is a bisect and two
    additions, and a reader merges the histograms of all instances with `add`.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[int, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0

    def observe(self, value: int) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def add(self, other: Histogram) -> None:
        """Accumulate `other` (same bounds) into this one: merging instances when read."""
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


@dataclass
class RequestStats:
    """Request outcomes of one version, counted on the event loop (one writer)."""

    success: int = 0
    success_ns: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    failure_ns: int = 0
    decode_ns: int = 0
    """Decoding and checking the requests that succeeded: part of their compute_input."""
    encode_ns: int = 0
    """Encoding their answers: part of their compute_output."""
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_NS))

    def succeeded(self, duration_ns: int) -> None:
        self.success += 1
        self.success_ns += duration_ns
        self.latency.observe(duration_ns)

    def failed(self, reason: str, duration_ns: int) -> None:
        self.failures[reason] += 1
        self.failure_ns += duration_ns
        self.latency.observe(duration_ns)

    @property
    def failure(self) -> int:
        """Failed requests, all reasons."""
        return sum(self.failures.values())


@dataclass
class CacheStats:
    """The response cache's work for one version (cache.py), counted on the event loop.

    As in Triton's statistics, a hit's time is looking the answer up and reading it out, a
    miss's is looking up and storing; neither counts the engine, which a hit never reaches.
    """

    hits: int = 0
    hit_ns: int = 0
    misses: int = 0
    miss_ns: int = 0
    evictions: int = 0
    """Entries the local cache dropped to stay within its size."""
    entries: int = 0
    bytes: int = 0
    """Held in the local cache now (keys and answers)."""
    stored_bytes: int = 0
    """Answers stored, in total (the local cache or Redis)."""
    errors: int = 0
    """Lookups and stores that failed (Redis down or slow); those requests were served by the
    engines as if the cache were off."""


@dataclass
class BatchStats:
    """Executions of one batch size (Triton's batch_stats)."""

    count: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0


@dataclass
class InstanceStats:
    """What one instance did; each is written by one engine thread only.

    As in Triton's statistics, the request-level times are summed per request: a batch of
    four requests that computed for 1 ms adds 4 ms to compute_infer_ns and 1 ms to its
    batch size's entry in `batches`. The scheduler's compute_input is joining a batch's
    inputs, its compute_output splitting the outputs; a request's decoding and encoding are
    in its version's `RequestStats` and the readers add them.
    """

    executions: int = 0
    """Engine runs (batches)."""
    inferences: int = 0
    """Rows inferred (a request of 3 rows counts 3)."""
    success: int = 0
    """Requests answered."""
    failures: int = 0
    """Requests the engine failed."""
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    last_inference_ms: int = 0
    run_ns: int = 0
    """Moving average of the engine's run time per execution (1/8 weight per run)."""
    batches: dict[int, BatchStats] = field(default_factory=dict)
    queue_histogram: Histogram = field(default_factory=lambda: Histogram(LATENCY_NS))
    batch_histogram: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZES))


def sum_instances(instances: Iterable[InstanceStats]) -> InstanceStats:
    """The sum of a version's instance counters (a snapshot; reading ints takes no lock)."""
    total = InstanceStats()
    for stats in list(instances):
        total.executions += stats.executions
        total.inferences += stats.inferences
        total.success += stats.success
        total.failures += stats.failures
        total.queue_ns += stats.queue_ns
        total.compute_input_ns += stats.compute_input_ns
        total.compute_infer_ns += stats.compute_infer_ns
        total.compute_output_ns += stats.compute_output_ns
        total.last_inference_ms = max(total.last_inference_ms, stats.last_inference_ms)
        total.queue_histogram.add(stats.queue_histogram)
        total.batch_histogram.add(stats.batch_histogram)
        # list(): the engine thread may add a batch size while this reads.
        for size, batch in list(stats.batches.items()):
            mine = total.batches.get(size)
            if mine is None:
                mine = total.batches[size] = BatchStats()
            mine.count += batch.count
            mine.compute_input_ns += batch.compute_input_ns
            mine.compute_infer_ns += batch.compute_infer_ns
            mine.compute_output_ns += batch.compute_output_ns
    return total


@dataclass(frozen=True)
class Durations:
    """A version's request-level times as Triton reports them (statistics and /metrics)."""

    requests: int
    """Requests executed: the count of queue and compute_* (Triton's)."""
    queue_ns: int
    compute_input_ns: int
    """Decoding and checking the requests, plus joining their batches."""
    compute_infer_ns: int
    compute_output_ns: int
    """Splitting the batches' outputs, plus encoding the answers."""


def durations(requests: RequestStats, instances: InstanceStats) -> Durations:
    """The one place that says what compute_input and compute_output include, so that the
    statistics extension and /metrics cannot disagree."""
    return Durations(
        instances.success,
        instances.queue_ns,
        instances.compute_input_ns + requests.decode_ns,
        instances.compute_infer_ns,
        instances.compute_output_ns + requests.encode_ns,
    )
