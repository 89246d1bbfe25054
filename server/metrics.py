"""What the server counts, and its two views: Triton's statistics JSON and Prometheus metrics.

Counting costs the hot path a few integer additions: the event loop counts request outcomes
in each version's `RequestStats`, every engine thread counts its own executions in its
`InstanceStats` (scheduler.py); nothing is shared between threads, so nothing is locked. A
scrape or a statistics request sums them. prometheus-client does the exposition through a
custom collector (its own Counter and Histogram take a lock per observation).

Triton's metric names are kept where they exist (`nv_inference_*`), labelled `model` and
`version`. They are exported as untyped samples with Triton's exact names: prometheus-client
would otherwise rename counter metadata to `*_total`, and dashboards built for Triton query the
bare names. Our own additions are `cinfer_*`, with real histograms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .errors import CinferError, EngineError, Unavailable
from .histogram import LATENCY_NS, Histogram
from .scheduler import InstanceStats

if TYPE_CHECKING:
    from .models import ModelVersion
    from .reconciler import Reconciler

#: Triton's failure reasons.
REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


def failure_reason(error: BaseException | None) -> str:
    """Triton's reason label for a failed request (None: the client went away)."""
    if error is None:
        return "CANCELED"
    if isinstance(error, Unavailable):
        return "REJECTED"
    if isinstance(error, EngineError) or not isinstance(error, CinferError):
        return "BACKEND"
    return "OTHER"


@dataclass
class RequestStats:
    """Request outcomes of one version, counted on the event loop (one writer)."""

    success: int = 0
    success_ns: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    failure_ns: int = 0
    decode_ns: int = 0
    """Decoding and checking the requests that succeeded (part of compute_input)."""
    encode_ns: int = 0
    """Encoding their answers (part of compute_output)."""
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_NS))

    def succeeded(self, duration_ns: int) -> None:
        self.success += 1
        self.success_ns += duration_ns
        self.latency.observe(duration_ns)

    def failed(self, reason: str, duration_ns: int) -> None:
        self.failures[reason] += 1
        self.failure_ns += duration_ns
        self.latency.observe(duration_ns)


def instance_totals(version: ModelVersion) -> InstanceStats:
    """The sum of a version's instance counters (a snapshot; no lock needed to read ints)."""
    total = InstanceStats()
    for stats in list(version.instance_stats):
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
        for size, batch in list(stats.batches.items()):
            mine = total.batches.setdefault(size, type(batch)())
            mine.count += batch.count
            mine.compute_input_ns += batch.compute_input_ns
            mine.compute_infer_ns += batch.compute_infer_ns
            mine.compute_output_ns += batch.compute_output_ns
    return total


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def statistics(version: ModelVersion) -> dict[str, Any]:
    """One entry of Triton's `model_stats`, as perf_analyzer and tritonclient parse it."""
    totals = instance_totals(version)
    requests = version.requests
    executed = totals.success
    return {
        "name": version.name,
        "version": str(version.version),
        "last_inference": totals.last_inference_ms,
        "inference_count": totals.inferences,
        "execution_count": totals.executions,
        "inference_stats": {
            "success": _duration(requests.success, requests.success_ns),
            "fail": _duration(sum(requests.failures.values()), requests.failure_ns),
            "queue": _duration(executed, totals.queue_ns),
            "compute_input": _duration(executed, totals.compute_input_ns + requests.decode_ns),
            "compute_infer": _duration(executed, totals.compute_infer_ns),
            "compute_output": _duration(executed, totals.compute_output_ns + requests.encode_ns),
            "cache_hit": _duration(0, 0),
            "cache_miss": _duration(0, 0),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(batch.count, batch.compute_input_ns),
                "compute_infer": _duration(batch.count, batch.compute_infer_ns),
                "compute_output": _duration(batch.count, batch.compute_output_ns),
            }
            for size, batch in sorted(totals.batches.items())
        ],
    }


def _triton(name: str, documentation: str) -> Metric:
    return Metric(name, documentation, "unknown")


def _histogram(
    family: HistogramMetricFamily, labels: list[str], histogram: Histogram, scale: float
) -> None:
    buckets = [
        (_bound(bound * scale), count)
        for bound, count in zip(histogram.bounds, histogram.cumulative())
    ]
    buckets.append(("+Inf", sum(histogram.counts)))
    family.add_metric(labels, buckets, histogram.total * scale)


def _bound(value: float) -> str:
    return f"{value:.6g}"


class MetricsCollector:
    """A prometheus-client collector reading the server's own counters at scrape time."""

    def __init__(
        self,
        reconciler: Reconciler,
        rejections: Callable[[], dict[int, int]] | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.rejections = rejections
        """Token-auth rejections by HTTP status, when authentication is on."""

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        success = _triton("nv_inference_request_success", "Successful inference requests")
        failure = _triton("nv_inference_request_failure", "Failed inference requests, by reason")
        count = _triton("nv_inference_count", "Inferences performed (a batch of N counts N)")
        exec_count = _triton("nv_inference_exec_count", "Model executions (batches)")
        request_us = _triton(
            "nv_inference_request_duration_us", "Cumulative request duration, microseconds"
        )
        queue_us = _triton("nv_inference_queue_duration_us", "Cumulative queue time, microseconds")
        input_us = _triton(
            "nv_inference_compute_input_duration_us", "Cumulative input preparation, microseconds"
        )
        infer_us = _triton(
            "nv_inference_compute_infer_duration_us", "Cumulative model compute, microseconds"
        )
        output_us = _triton(
            "nv_inference_compute_output_duration_us", "Cumulative output handling, microseconds"
        )
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Requests accepted and not yet answered",
            labels=labels,
        )
        load = GaugeMetricFamily(
            "nv_model_load_duration_secs", "How long the version took to load", labels=labels
        )
        latency = HistogramMetricFamily(
            "cinfer_request_duration_seconds", "Infer request latency in the server", labels=labels
        )
        queue = HistogramMetricFamily(
            "cinfer_queue_duration_seconds", "Time requests waited for an instance", labels=labels
        )
        batches = HistogramMetricFamily(
            "cinfer_batch_size", "Rows per model execution", labels=labels
        )
        state = GaugeMetricFamily(
            "cinfer_model_state", "1 for the state each version is in", labels=[*labels, "state"]
        )
        instances = GaugeMetricFamily(
            "cinfer_model_instances", "Engine instances loaded", labels=labels
        )
        for name, model in list(self.reconciler.models.items()):
            for number, version in list(model.versions.items()):
                tags = {"model": name, "version": str(number)}
                values = [name, str(number)]
                totals = instance_totals(version)
                requests = version.requests
                success.add_sample("nv_inference_request_success", tags, requests.success)
                for reason, n in requests.failures.items():
                    failure.add_sample(
                        "nv_inference_request_failure", {**tags, "reason": reason}, n
                    )
                count.add_sample("nv_inference_count", tags, totals.inferences)
                exec_count.add_sample("nv_inference_exec_count", tags, totals.executions)
                request_us.add_sample(
                    "nv_inference_request_duration_us",
                    tags,
                    (requests.success_ns + requests.failure_ns) // 1000,
                )
                queue_us.add_sample("nv_inference_queue_duration_us", tags, totals.queue_ns // 1000)
                input_us.add_sample(
                    "nv_inference_compute_input_duration_us", tags, totals.compute_input_ns // 1000
                )
                infer_us.add_sample(
                    "nv_inference_compute_infer_duration_us", tags, totals.compute_infer_ns // 1000
                )
                output_us.add_sample(
                    "nv_inference_compute_output_duration_us",
                    tags,
                    totals.compute_output_ns // 1000,
                )
                pool = version.pool
                pending.add_metric(values, pool.pending if pool is not None else 0)
                load.add_metric(values, version.load_seconds)
                _histogram(latency, values, requests.latency, 1e-9)
                _histogram(queue, values, totals.queue_histogram, 1e-9)
                _histogram(batches, values, totals.batch_histogram, 1)
                state.add_metric([*values, version.state.value], 1)
                instances.add_metric(values, pool.instances if pool is not None else 0)
        yield from (
            success, failure, count, exec_count, request_us, queue_us,
            input_us, infer_us, output_us, pending, load, latency, queue, batches, state, instances,
        )  # fmt: skip
        if self.rejections is not None:
            rejected = CounterMetricFamily(
                "cinfer_auth_rejections",
                "Requests refused by token auth, by status",
                labels=["status"],
            )
            for status, n in sorted(self.rejections().items()):
                rejected.add_metric([str(status)], n)
            yield rejected


def registry(
    reconciler: Reconciler, rejections: Callable[[], dict[int, int]] | None = None
) -> CollectorRegistry:
    """A registry with the server's metrics and the process's (RSS, CPU, open files)."""
    out = CollectorRegistry(auto_describe=False)
    out.register(MetricsCollector(reconciler, rejections))
    ProcessCollector(registry=out)
    return out
