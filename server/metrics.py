"""Prometheus metrics, read from the counters (counters.py); statistics.py is the other view.

prometheus-client does the exposition through a custom collector that reads the counters at
scrape time (its own Counter and Histogram take a lock per observation).

Triton's metric names are kept where they exist (`nv_inference_*`), labelled `model` and
`version`. They are exported as untyped samples with Triton's exact names: prometheus-client
would otherwise rename counter metadata to `*_total`, and dashboards built for Triton query the
bare names. Our own additions are `cinfer_*`, with real histograms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .counters import Histogram, durations, sum_instances

if TYPE_CHECKING:
    from .reconciler import Reconciler


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
                totals = sum_instances(version.instance_stats)
                requests = version.requests
                times = durations(requests, totals)
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
                queue_us.add_sample("nv_inference_queue_duration_us", tags, times.queue_ns // 1000)
                input_us.add_sample(
                    "nv_inference_compute_input_duration_us", tags, times.compute_input_ns // 1000
                )
                infer_us.add_sample(
                    "nv_inference_compute_infer_duration_us", tags, times.compute_infer_ns // 1000
                )
                output_us.add_sample(
                    "nv_inference_compute_output_duration_us",
                    tags,
                    times.compute_output_ns // 1000,
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
