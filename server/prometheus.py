"""Prometheus metrics: the counters (counters.py) in the text exposition format, for
`GET /metrics` and for the separate metrics port ([metrics] port).

Why a renderer of its own: prometheus-client's collector machinery (a Sample tuple per value,
label escaping and float formatting per sample) took 0.3-0.5 s on the event loop for a
repository of 300 models, and no request was served meanwhile (issue 11, finding 12). Here each
version's label set is escaped once and its lines are formatted straight from the counters,
in slices of `CHUNK` versions with a yield to the event loop between them: a scrape costs time
linear in the number of versions and never holds requests up for more than one slice. The
process metrics (RSS, CPU, open files), the garbage collector's and the auth rejections are a
fixed handful of lines and still come from prometheus-client.

Triton's metric names are kept where they exist (`nv_inference_*`), labelled `model` and
`version`, with Triton's types (counters and gauges) and its exact sample names: dashboards
built for Triton query the bare names, without the `_total` that OpenMetrics would add. Our own
additions are `cinfer_*`, with real histograms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .counters import BATCH_SIZES, LATENCY_NS, Histogram, durations, sum_instances
from .heap import GENERATIONS, Collector
from .models import ModelVersion
from .reconciler import Reconciler

log = logging.getLogger("cinfer")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds a metrics-port client has to send its request head.
HEAD_TIMEOUT = 10.0

#: Versions rendered between two yields to the event loop (about 0.3 ms of work on these
#: machines: a slice is the longest a scrape holds a request up).
CHUNK = 8


@dataclass(frozen=True)
class Family:
    """One metric family: its name, Prometheus type and help text."""

    name: str
    type: str
    help: str

    @property
    def header(self) -> str:
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.type}\n"


#: The families with one sample (or histogram) per loaded version, in exposition order.
FAMILIES = (
    SUCCESS := Family("nv_inference_request_success", "counter", "Successful inference requests"),
    FAILURE := Family(
        "nv_inference_request_failure", "counter", "Failed inference requests, by reason"
    ),
    COUNT := Family(
        "nv_inference_count", "counter", "Inferences performed (a batch of N counts N)"
    ),
    EXEC_COUNT := Family("nv_inference_exec_count", "counter", "Model executions (batches)"),
    REQUEST_US := Family(
        "nv_inference_request_duration_us", "counter", "Cumulative request duration, microseconds"
    ),
    QUEUE_US := Family(
        "nv_inference_queue_duration_us", "counter", "Cumulative queue time, microseconds"
    ),
    INPUT_US := Family(
        "nv_inference_compute_input_duration_us",
        "counter",
        "Cumulative input handling (decoding, checking, batching), microseconds",
    ),
    INFER_US := Family(
        "nv_inference_compute_infer_duration_us",
        "counter",
        "Cumulative model compute, microseconds",
    ),
    OUTPUT_US := Family(
        "nv_inference_compute_output_duration_us",
        "counter",
        "Cumulative output handling (splitting batches, encoding), microseconds",
    ),
    PENDING := Family(
        "nv_inference_pending_request_count", "gauge", "Requests accepted and not yet answered"
    ),
    LOAD := Family("nv_model_load_duration_secs", "gauge", "How long the version took to load"),
    LATENCY := Family(
        "cinfer_request_duration_seconds", "histogram", "Infer request latency in the server"
    ),
    QUEUE := Family(
        "cinfer_queue_duration_seconds", "histogram", "Time requests waited for an instance"
    ),
    BATCH := Family("cinfer_batch_size", "histogram", "Rows per model execution"),
    STATE := Family("cinfer_model_state", "gauge", "1 for the state each version is in"),
    INSTANCES := Family("cinfer_model_instances", "gauge", "Engine instances loaded"),
    # The response cache (cache.py), for the versions that enable it: Triton's names for
    # hits, misses and their durations, ours for the rest.
    CACHE_HITS := Family("nv_cache_num_hits_per_model", "counter", "Response cache hits"),
    CACHE_MISSES := Family("nv_cache_num_misses_per_model", "counter", "Response cache misses"),
    CACHE_HIT_US := Family(
        "nv_cache_hit_duration_per_model",
        "counter",
        "Cumulative time to look up and read out cache hits, microseconds",
    ),
    CACHE_MISS_US := Family(
        "nv_cache_miss_duration_per_model",
        "counter",
        "Cumulative time to look up and store cache misses, microseconds",
    ),
    CACHE_EVICTIONS := Family(
        "cinfer_cache_evictions", "counter", "Entries the local response cache dropped for room"
    ),
    CACHE_BYTES := Family(
        "cinfer_cache_bytes", "gauge", "Bytes the version's entries take in the local cache"
    ),
    CACHE_ENTRIES := Family("cinfer_cache_entries", "gauge", "The version's local cache entries"),
    CACHE_STORED := Family(
        "cinfer_cache_stored_bytes", "counter", "Bytes of answers stored in the cache"
    ),
    CACHE_ERRORS := Family(
        "cinfer_cache_errors",
        "counter",
        "Cache lookups and stores that failed (Redis down or slow); the engines answered",
    ),
)
_INDEX = {family: i for i, family in enumerate(FAMILIES)}


def _escape(value: str) -> str:
    """A label value as the text format quotes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _bound(value: float) -> str:
    return f"{value:.6g}"


class _Buckets:
    """The fixed part of one histogram's lines: its name and `le` labels, made once."""

    def __init__(self, family: Family, bounds: tuple[int, ...], scale: float) -> None:
        self.name = family.name
        self.scale = scale
        self.le = [f'{{le="{_bound(b * scale)}",' for b in bounds] + ['{le="+Inf",']

    def lines(self, tags: str, histogram: Histogram) -> str:
        name = self.name
        bucket = f"{name}_bucket"
        parts = [
            f"{bucket}{le}{tags}}} {n}\n"
            for le, n in zip(self.le, histogram.cumulative(), strict=True)
        ]
        total = histogram.total * self.scale if self.scale != 1 else histogram.total
        count = sum(histogram.counts)
        parts.append(f"{name}_sum{{{tags}}} {total}\n{name}_count{{{tags}}} {count}\n")
        return "".join(parts)


class _Rejections:
    """A prometheus-client collector for the auth rejections (one line per status)."""

    def __init__(self, count: Callable[[], Mapping[int, int]]) -> None:
        self.count = count

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "cinfer_auth_rejections", "Requests refused by token auth, by status", labels=["status"]
        )
        for status, n in sorted(self.count().items()):
            family.add_metric([str(status)], n)
        yield family


class _Heap:
    """A prometheus-client collector for the garbage collector (heap.py): collections and
    the time they held the event loop, per generation, and the objects frozen."""

    def __init__(self, heap: Collector) -> None:
        self.heap = heap

    def collect(self) -> Iterator[Metric]:
        heap = self.heap
        collections = CounterMetricFamily(
            "cinfer_gc_collections",
            "Garbage collections by generation",
            labels=["generation"],
        )
        pause = CounterMetricFamily(
            "cinfer_gc_pause_seconds",
            "Time spent in garbage collections (no request is served meanwhile), by generation",
            labels=["generation"],
        )
        for generation in GENERATIONS:
            collections.add_metric([str(generation)], heap.collections[generation])
            pause.add_metric([str(generation)], heap.pause_seconds[generation])
        yield collections
        yield pause
        yield GaugeMetricFamily(
            "cinfer_gc_frozen_objects",
            "Objects held since the last model change, which collections no longer walk",
            value=heap.frozen,
        )


class Exposition:
    """The server's metrics in Prometheus' text format, rendered from the counters."""

    def __init__(
        self,
        reconciler: Reconciler,
        rejections: Callable[[], Mapping[int, int]] | None = None,
        chunk: int = CHUNK,
    ) -> None:
        self.reconciler = reconciler
        self.chunk = chunk
        """Versions rendered between two yields to the event loop."""
        self._extras = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._extras)
        if rejections is not None:
            # Token-auth rejections by HTTP status, when authentication is on.
            self._extras.register(_Rejections(rejections))
        if reconciler.heap is not None:
            self._extras.register(_Heap(reconciler.heap))
        self._latency = _Buckets(LATENCY, LATENCY_NS, 1e-9)
        self._queue = _Buckets(QUEUE, LATENCY_NS, 1e-9)
        self._batch = _Buckets(BATCH, BATCH_SIZES, 1)

    async def render(self) -> bytes:
        """The whole exposition; gives the event loop back every `chunk` versions."""
        lines: list[list[str]] = [[] for _ in FAMILIES]
        models = self.reconciler.models
        done = 0
        for name in sorted(models):
            model = models.get(name)
            if model is None:  # unloaded while this scrape gave the loop back
                continue
            for _, version in sorted(model.versions.items()):
                if done and not done % self.chunk:
                    await asyncio.sleep(0)
                self._version(lines, name, version)
                done += 1
        out = [part for family, found in zip(FAMILIES, lines) for part in (family.header, *found)]
        return "".join(out).encode() + generate_latest(self._extras)

    def _version(self, lines: list[list[str]], name: str, version: ModelVersion) -> None:
        # Labels in sorted order, as prometheus-client and Triton write them (text greps and
        # the tests that were written against them rely on it).
        model, number = f'model="{_escape(name)}"', f'version="{version.version}"'
        tags = f"{model},{number}"
        totals = sum_instances(version.instance_stats)
        requests = version.requests
        times = durations(requests, totals)
        pool = version.pool

        def add(family: Family, value: object) -> None:
            lines[_INDEX[family]].append(f"{family.name}{{{tags}}} {value}\n")

        add(SUCCESS, requests.success)
        failure = lines[_INDEX[FAILURE]]
        for reason, n in requests.failures.items():
            failure.append(f'{FAILURE.name}{{{model},reason="{reason}",{number}}} {n}\n')
        add(COUNT, totals.inferences)
        add(EXEC_COUNT, totals.executions)
        add(REQUEST_US, (requests.success_ns + requests.failure_ns) // 1000)
        add(QUEUE_US, times.queue_ns // 1000)
        add(INPUT_US, times.compute_input_ns // 1000)
        add(INFER_US, times.compute_infer_ns // 1000)
        add(OUTPUT_US, times.compute_output_ns // 1000)
        add(PENDING, pool.pending if pool is not None else 0)
        add(LOAD, version.load_seconds)
        lines[_INDEX[LATENCY]].append(self._latency.lines(tags, requests.latency))
        lines[_INDEX[QUEUE]].append(self._queue.lines(tags, totals.queue_histogram))
        lines[_INDEX[BATCH]].append(self._batch.lines(tags, totals.batch_histogram))
        state = version.state.value
        lines[_INDEX[STATE]].append(f'{STATE.name}{{{model},state="{state}",{number}}} 1\n')
        add(INSTANCES, pool.instances if pool is not None else 0)
        if version.config.cache.enabled:
            cache = version.cache
            add(CACHE_HITS, cache.hits)
            add(CACHE_MISSES, cache.misses)
            add(CACHE_HIT_US, cache.hit_ns // 1000)
            add(CACHE_MISS_US, cache.miss_ns // 1000)
            add(CACHE_EVICTIONS, cache.evictions)
            add(CACHE_BYTES, cache.bytes)
            add(CACHE_ENTRIES, cache.entries)
            add(CACHE_STORED, cache.stored_bytes)
            add(CACHE_ERRORS, cache.errors)


class MetricsPort:
    """`GET /metrics` on a port of its own ([metrics] port): a plain asyncio server on the
    running loop, rendering with the same `Exposition` in the same slices (prometheus-client's
    threaded server rendered under the GIL, against the loop). One request per connection
    (`Connection: close`), which scrapers handle."""

    def __init__(self, exposition: Exposition, host: str, port: int) -> None:
        self.exposition = exposition
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._answer, self.host, self.port)
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.partition(b" ")
            target = rest.partition(b" ")[0]
            body = b""
            if target.split(b"?", 1)[0] != b"/metrics":
                status, kind, body = "404 Not Found", "text/plain", b"metrics are at /metrics\n"
            elif method not in (b"GET", b"HEAD"):
                status, kind = "405 Method Not Allowed", "text/plain"
            else:
                status, kind, body = "200 OK", CONTENT_TYPE, await self.exposition.render()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that sent no complete request head, or went away: nothing to say
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
