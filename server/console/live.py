"""The dashboard's live numbers: sampled from the core's counters every `INTERVAL` seconds,
the last 15 minutes kept, and pushed to browsers as server-sent events.

A sample is the request rate, error rate, p50 and p99 latency (from the difference of the
latency histograms between two samples, so it is the latency of those two seconds), the
process's CPU use and resident memory, each model's queue depth, and, where NVML finds a GPU,
each GPU's utilisation and memory (gpus.py; read off the event loop). Sampling reads the same
counters `/metrics` renders and adds nothing to the request path.

A stream first sends the whole history, then each new sample, and ends after `STREAM_S` so
that the browser reconnects (EventSource does by itself, after the ``retry`` the stream
names) and the session is checked again; a dropped connection reconnects the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from ..counters import LATENCY_NS, Histogram
from ..reconciler import Reconciler
from .gpus import GPUs

INTERVAL = 2.0
HISTORY = int(15 * 60 / INTERVAL)
STREAM_S = 300.0
RETRY_MS = 2000


@dataclass(frozen=True)
class Sample:
    time: float
    requests_per_s: float
    errors_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    cpu_percent: float
    rss_mb: float
    queues: dict[str, int]
    gpus: dict[str, float] = field(default_factory=dict)
    """GPUs.read()'s fields (``gpu0_percent``, ...); none without a GPU."""

    def fields(self) -> dict[str, Any]:
        """The sample as the stream sends it: the GPU fields beside the others."""
        data = asdict(self)
        data.update(data.pop("gpus"))
        return data


def quantile(counts: list[int], q: float) -> float | None:
    """The upper bound (ms) of the latency bucket holding quantile `q` of `counts`
    (LATENCY_NS buckets, +Inf last); None when nothing was counted."""
    total = sum(counts)
    if not total:
        return None
    wanted, seen = q * total, 0
    for bound, count in zip((*LATENCY_NS, None), counts, strict=True):
        seen += count
        if seen >= wanted:
            return (bound if bound is not None else LATENCY_NS[-1]) / 1e6
    return LATENCY_NS[-1] / 1e6


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Live:
    """Samples the counters on the event loop (the GPUs off it); streams the samples."""

    def __init__(
        self, reconciler: Reconciler, interval: float = INTERVAL, nvml: Any = None
    ) -> None:
        """`nvml`: what GPUs.open() reads the GPUs through; None is ``pynvml`` itself."""
        self.reconciler = reconciler
        self.interval = interval
        self.nvml = nvml
        self.gpus: GPUs | None = None
        """The GPUs sampled, from start() on; None without NVML or a GPU."""
        self.history: deque[Sample] = deque(maxlen=HISTORY)
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._last: tuple[float, float, int, int, list[int]] | None = None

    async def start(self) -> None:
        self.gpus = await asyncio.to_thread(GPUs.open, self.nvml)
        self._last = self._totals()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.gpus is not None:
            await asyncio.to_thread(self.gpus.close)
            self.gpus = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            gpus = await asyncio.to_thread(self.gpus.read) if self.gpus is not None else {}
            self.sample(gpus)
            async with self._changed:
                self._changed.notify_all()

    def _totals(self) -> tuple[float, float, int, int, list[int]]:
        """(now, CPU seconds, requests, failures, latency counts) over every loaded version."""
        latency = Histogram(LATENCY_NS)
        requests = failures = 0
        for model in list(self.reconciler.models.values()):
            for version in list(model.versions.values()):
                stats = version.requests
                failed = stats.failure
                requests += stats.success + failed
                failures += failed
                latency.add(stats.latency)
        times = os.times()
        return time.time(), times.user + times.system, requests, failures, latency.counts

    def sample(self, gpus: dict[str, float] | None = None) -> Sample:
        """The sample of the counters since the last one, with `gpus`' fields."""
        now, cpu, requests, failures, counts = totals = self._totals()
        last = self._last or totals
        self._last = totals
        elapsed = max(now - last[0], 1e-6)
        # A version retired between two samples takes its counts along: never negative.
        delta = [max(0, a - b) for a, b in zip(counts, last[4], strict=True)]
        queues = {}
        for name, model in sorted(self.reconciler.models.items()):
            queues[name] = sum(
                v.pool.pending for v in model.versions.values() if v.pool is not None
            )
        sample = Sample(
            time=now,
            requests_per_s=round(max(0, requests - last[2]) / elapsed, 2),
            errors_per_s=round(max(0, failures - last[3]) / elapsed, 2),
            p50_ms=quantile(delta, 0.5),
            p99_ms=quantile(delta, 0.99),
            cpu_percent=round(max(0.0, cpu - last[1]) / elapsed * 100, 1),
            rss_mb=round(_rss_mb(), 1),
            queues=queues,
            gpus=gpus or {},
        )
        self.history.append(sample)
        return sample

    async def events(self, duration: float = STREAM_S) -> AsyncIterator[bytes]:
        """The SSE stream: ``history`` (every sample kept), then a ``sample`` each interval,
        until `duration` has passed."""
        yield f"retry: {RETRY_MS}\n".encode()
        yield _event("history", [s.fields() for s in self.history])
        deadline = time.monotonic() + duration
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    return
            if self.history:
                yield _event("sample", self.history[-1].fields())


def _event(kind: str, data: object) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
