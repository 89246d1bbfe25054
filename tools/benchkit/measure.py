"""Measurement windows, perf_analyzer's stability rule, and the result of one load level.

A level is measured in windows until the last three agree within ±10% (by default) on
throughput and on the latency that decides stability (the average, or --percentile), or until
the cap on windows. Its result pools the last three windows, as perf_analyzer does (delayed
requests too); errors are counted over all of its windows, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .load import Sample
from .target import ServerStats

PERCENTILES = (50, 90, 95, 99)
STABILITY_WINDOWS = 3


def merge_errors(into: dict[str, list[Any]], more: dict[str, list[Any]]) -> None:
    """Add `more`'s counts into `into`, keeping the first message of each kind."""
    for key, (count, message) in more.items():
        if key in into:
            into[key][0] += count
        else:
            into[key] = [count, message]


@dataclass
class Window:
    """One measurement window, the samples of all workers merged."""

    throughput: float
    """Inferences per second: successful requests x batch / s, summed over workers."""
    latencies_ns: np.ndarray
    send_ns: int
    recv_ns: int
    errors: dict[str, list[Any]]
    cpu: list[float]
    """Each worker's CPU time over its interval: 1.0 is one core."""
    sent: int
    delayed: int
    duration_s: float
    server: ServerStats | None = None
    sent_bytes: int = 0
    """Body bytes of the requests sent."""

    @classmethod
    def merge(cls, samples: Sequence[Sample], batch: int, server: ServerStats | None) -> Window:
        errors: dict[str, list[Any]] = {}
        for s in samples:
            merge_errors(errors, s.errors)
        return cls(
            throughput=sum(
                len(s.latencies_ns) * batch / (s.duration_ns / 1e9)
                for s in samples
                if s.duration_ns > 0
            ),
            latencies_ns=np.concatenate(
                [np.frombuffer(s.latencies_ns, dtype=np.int64) for s in samples]
            ),
            send_ns=sum(s.send_ns for s in samples),
            recv_ns=sum(s.recv_ns for s in samples),
            errors=errors,
            cpu=[s.cpu_s / (s.duration_ns / 1e9) if s.duration_ns else 0.0 for s in samples],
            sent=sum(s.sent for s in samples),
            delayed=sum(s.delayed for s in samples),
            duration_s=max(s.duration_ns for s in samples) / 1e9,
            server=server,
            sent_bytes=sum(s.sent_bytes for s in samples),
        )

    @property
    def successes(self) -> int:
        return int(self.latencies_ns.size)

    @property
    def error_count(self) -> int:
        return sum(count for count, _ in self.errors.values())

    def latency_ns(self, percentile: int | None) -> float:
        """The latency that decides stability: the average, or the given percentile."""
        if not self.latencies_ns.size:
            return 0.0
        if percentile is None:
            return float(self.latencies_ns.mean())
        return float(np.percentile(self.latencies_ns, percentile))


def is_stable(
    windows: Sequence[Window],
    percentile: int | None,
    tolerance: float = 0.10,
    count: int = STABILITY_WINDOWS,
) -> bool:
    """perf_analyzer's rule: the last `count` windows each within ±tolerance of their mean,
    on throughput and on latency (the average, or `percentile`)."""
    if len(windows) < count:
        return False
    last = windows[-count:]
    for values in (
        [w.throughput for w in last],
        [w.latency_ns(percentile) for w in last],
    ):
        mean = sum(values) / count
        if mean <= 0 or any(abs(v / mean - 1) > tolerance for v in values):
            return False
    return True


@dataclass(frozen=True)
class Totals:
    """Every request of a level (or a run): all its windows, and those still in flight when it
    stopped. What the server saw, to compare with its own counts."""

    sent: int = 0
    succeeded: int = 0
    body_bytes: int = 0
    """Bytes of the bodies sent."""

    @classmethod
    def of(cls, windows: Sequence[Window]) -> Totals:
        return cls(
            sum(w.sent for w in windows),
            sum(w.successes for w in windows),
            sum(w.sent_bytes for w in windows),
        )

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.sent + other.sent,
            self.succeeded + other.succeeded,
            self.body_bytes + other.body_bytes,
        )


@dataclass
class Level:
    """The result of one concurrency or request-rate level."""

    value: float
    windows: list[Window]
    stable: bool
    percentile: int | None
    throughput: float = 0.0
    latency_us: dict[str, float] = field(default_factory=dict)
    """'avg', 'p50', 'p90', 'p95', 'p99' (and 'p<N>' for --percentile), microseconds."""
    send_us: float = 0.0
    recv_us: float = 0.0
    server: ServerStats | None = None
    errors: dict[str, list[Any]] = field(default_factory=dict)
    cpu: list[float] = field(default_factory=list)
    sent: int = 0
    delayed: int = 0
    request_bytes: float = 0.0
    """Mean body bytes of the requests sent in the pooled windows."""
    totals: Totals = field(default_factory=Totals)

    @classmethod
    def of(
        cls,
        value: float,
        windows: list[Window],
        stable: bool,
        percentile: int | None,
        tail: Window | None = None,
    ) -> Level:
        """The level from its windows; `tail` is what was sent and answered after the last
        one (counted in the totals only)."""
        level = cls(value, windows, stable, percentile)
        last = windows[-STABILITY_WINDOWS:]
        level.throughput = sum(w.throughput for w in last) / len(last)
        latencies = np.concatenate([w.latencies_ns for w in last])
        successes = latencies.size
        if successes:
            level.latency_us["avg"] = float(latencies.mean()) / 1000
            wanted = sorted({*PERCENTILES, *([percentile] if percentile else [])})
            for p, v in zip(wanted, np.percentile(latencies, wanted)):
                level.latency_us[f"p{p}"] = float(v) / 1000
            level.send_us = sum(w.send_ns for w in last) / successes / 1000
            level.recv_us = sum(w.recv_ns for w in last) / successes / 1000
        servers = [w.server for w in last if w.server is not None]
        if servers and len(servers) == len(last):
            total = servers[0]
            for s in servers[1:]:
                total = total + s
            level.server = total
        for w in windows:
            merge_errors(level.errors, w.errors)
        workers = len(last[0].cpu)
        level.cpu = [sum(w.cpu[i] for w in last) / len(last) for i in range(workers)]
        level.sent = sum(w.sent for w in last)
        level.delayed = sum(w.delayed for w in last)
        if level.sent:
            level.request_bytes = sum(w.sent_bytes for w in last) / level.sent
        level.totals = Totals.of([*windows, *([tail] if tail is not None else [])])
        if tail is not None:
            merge_errors(level.errors, tail.errors)
        return level

    @property
    def error_count(self) -> int:
        return sum(count for count, _ in self.errors.values())

    def latency(self, key: str) -> float:
        return self.latency_us.get(key, 0.0)

    def breakdown_us(self) -> dict[str, float]:
        """perf_analyzer's CSV columns after the level and throughput, in microseconds."""
        queue = compute_input = compute_infer = compute_output = 0.0
        if self.server is not None:
            queue = self.server.per_request_us("queue")
            compute_input = self.server.per_request_us("compute_input")
            compute_infer = self.server.per_request_us("compute_infer")
            compute_output = self.server.per_request_us("compute_output")
        avg = self.latency("avg")
        wait = max(avg - self.send_us - self.recv_us, 0.0)
        accounted = queue + compute_input + compute_infer + compute_output
        return {
            "Client Send": self.send_us,
            # Client and server clocks measure different spans: capped at 0 like perf_analyzer.
            "Network+Server Send/Recv": max(wait - accounted, 0.0),
            "Server Queue": queue,
            "Server Compute Input": compute_input,
            "Server Compute Infer": compute_infer,
            "Server Compute Output": compute_output,
            "Client Recv": self.recv_us,
            "p50 latency": self.latency("p50"),
            "p90 latency": self.latency("p90"),
            "p95 latency": self.latency("p95"),
            "p99 latency": self.latency("p99"),
            "Avg latency": avg,
            "request/response": self.send_us + self.recv_us,
            "response wait": wait,
        }
