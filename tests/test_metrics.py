"""Prometheus metrics, Triton's statistics extension and the access log, after known requests."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.settings import Settings
from tests import onnx_models
from tests.conftest import queued_behind_a_held_request, running_app, slow_model

pytestmark = pytest.mark.anyio

IRIS = {
    "inputs": [
        {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
    ]
}
BAD = {
    "inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [5.1, 3.5, 1.4]}]
}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample by (name, labels), names as on the wire: the parser names a counter's
    samples `<family>_total`, where Triton (and we) send the bare family name."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if family.type == "counter" and f"\n{family.name}{{" in text:
                name = name.removesuffix("_total")
            out[(name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics[(name, frozenset(labels.items()))]


@pytest.fixture
def repository(repo: Path) -> Path:
    onnx_models.copy_samples(repo)
    return repo


async def test_counters_and_histograms_move_with_known_requests(repository: Path) -> None:
    async with running_app(repository) as (client, _):
        for _ in range(3):
            assert (await client.post("/v2/models/iris/infer", json=IRIS)).status_code == 200
        assert (await client.post("/v2/models/iris/infer", json=BAD)).status_code == 400
        text = (await client.get("/metrics")).text
    m = samples(text)
    iris = {"model": "iris", "version": "1"}
    assert value(m, "nv_inference_request_success", **iris) == 3
    assert value(m, "nv_inference_request_failure", **iris, reason="OTHER") == 1
    assert value(m, "nv_inference_request_failure", **iris, reason="REJECTED") == 0
    # Warm-up is not a request: only the three that succeeded were executed and counted.
    assert value(m, "nv_inference_count", **iris) == 3
    assert value(m, "nv_inference_exec_count", **iris) == 3
    assert value(m, "nv_inference_request_duration_us", **iris) > 0
    assert value(m, "nv_inference_pending_request_count", **iris) == 0
    assert value(m, "nv_model_load_duration_secs", **iris) > 0
    assert value(m, "cinfer_request_duration_seconds_count", **iris) == 4
    assert value(m, "cinfer_request_duration_seconds_bucket", **iris, le="+Inf") == 4
    assert value(m, "cinfer_request_duration_seconds_bucket", **iris, le="10") == 4
    assert value(m, "cinfer_queue_duration_seconds_count", **iris) == 3
    assert value(m, "cinfer_batch_size_bucket", **iris, le="1") == 3
    assert value(m, "cinfer_model_state", **iris, state="READY") == 1
    assert value(m, "cinfer_model_instances", **iris) == 1
    assert value(m, "process_resident_memory_bytes") > 10_000_000
    # Triton's bare sample names, as dashboards built for Triton query them.
    assert 'nv_inference_request_success{model="iris",version="1"} 3\n' in text


async def test_batch_size_histogram_reflects_batching(repo: Path) -> None:
    onnx_models.dense(repo / "dense" / "1" / "model.onnx", width=16)
    (repo / "dense" / "model.toml").write_text(
        'engine = "onnxruntime"\nmax_batch_size = 8\n[batching]\nmax_queue_delay_us = 2000000\n'
    )
    one = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
    async with running_app(repo) as (client, _):
        responses = await asyncio.gather(
            *(client.post("/v2/models/dense/infer", json=one) for _ in range(8))
        )
        assert all(r.status_code == 200 for r in responses)
        m = samples((await client.get("/metrics")).text)
        stats = (await client.get("/v2/models/dense/stats")).json()["model_stats"][0]
    labels = {"model": "dense", "version": "1"}
    assert value(m, "cinfer_batch_size_bucket", **labels, le="4") == 0
    assert value(m, "cinfer_batch_size_bucket", **labels, le="8") == 1
    assert value(m, "nv_inference_exec_count", **labels) == 1
    assert value(m, "nv_inference_count", **labels) == 8
    assert stats["execution_count"] == 1 and stats["inference_count"] == 8
    assert [b["batch_size"] for b in stats["batch_stats"]] == [8]
    assert stats["batch_stats"][0]["compute_infer"]["count"] == 1
    assert stats["inference_stats"]["compute_infer"]["count"] == 8


async def test_queue_full_counts_as_rejected(repo: Path) -> None:
    slow_model(repo, "max_queue_size = 1")
    async with running_app(repo) as (client, dataplane):
        responses = await queued_behind_a_held_request(client, dataplane, 5)
        rejected = sum(r.status_code == 503 for r in responses)
        m = samples((await client.get("/metrics")).text)
        stats = (await client.get("/v2/models/slow/versions/1/stats")).json()["model_stats"][0]
    labels = {"model": "slow", "version": "1"}
    assert rejected >= 1
    assert value(m, "nv_inference_request_failure", **labels, reason="REJECTED") == rejected
    assert value(m, "nv_inference_request_success", **labels) == 6 - rejected
    assert stats["inference_stats"]["fail"]["count"] == rejected
    assert stats["inference_stats"]["success"]["count"] == 6 - rejected


async def test_statistics_shape_and_counts(repository: Path) -> None:
    async with running_app(repository) as (client, _):
        for _ in range(2):
            await client.post("/v2/models/iris/infer", json=IRIS)
        await client.post("/v2/models/iris/infer", json=BAD)
        everything = (await client.get("/v2/models/stats")).json()
        one = (await client.get("/v2/models/iris/stats")).json()
        missing = await client.get("/v2/models/nope/stats")
    assert missing.status_code == 404
    assert [s["name"] for s in everything["model_stats"]] == ["digits", "iris"]
    (iris,) = one["model_stats"]
    assert set(iris) == {
        "name", "version", "last_inference", "inference_count", "execution_count",
        "inference_stats", "batch_stats",
    }  # fmt: skip
    assert iris["name"] == "iris" and iris["version"] == "1"
    assert iris["inference_count"] == 2 and iris["execution_count"] == 2
    assert iris["last_inference"] > 1_700_000_000_000
    stats = iris["inference_stats"]
    assert set(stats) == {
        "success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
        "cache_hit", "cache_miss",
    }  # fmt: skip
    assert stats["success"]["count"] == 2 and stats["fail"]["count"] == 1
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[key]["count"] == 2
        assert isinstance(stats[key]["ns"], int) and stats[key]["ns"] >= 0
    assert stats["compute_infer"]["ns"] > 0
    assert stats["cache_hit"] == {"count": 0, "ns": 0}
    assert iris["batch_stats"][0]["batch_size"] == 1
    assert iris["batch_stats"][0]["compute_infer"]["count"] == 2


async def test_metrics_can_be_turned_off(repository: Path) -> None:
    settings = Settings.model_validate({"metrics": {"enabled": False}})
    async with running_app(repository, settings) as (client, _):
        assert (await client.get("/metrics")).status_code == 404


@pytest.mark.parametrize("style", ["text", "json"])
async def test_access_log(repository: Path, style: str, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.model_validate({"server": {"access_log": style}})
    async with running_app(repository, settings) as (client, _):
        with caplog.at_level(logging.INFO, logger="cinfer.access"):
            mine = await client.post(
                "/v2/models/iris/infer", json=IRIS, headers={"X-Request-ID": "abc-123"}
            )
            fresh = await client.get("/v2/models/iris")
            hostile = await client.get("/v2/health/live", headers={"X-Request-ID": "x\ny z"})
    assert mine.headers["x-request-id"] == "abc-123"
    assert len(fresh.headers["x-request-id"]) == 32
    assert hostile.headers["x-request-id"] != "x\ny z"
    lines = [r.getMessage() for r in caplog.records if r.name == "cinfer.access"]
    assert len(lines) == 3
    if style == "json":
        first = json.loads(lines[0])
        assert first["request_id"] == "abc-123" and first["status"] == 200
        assert (first["model"], first["version"], first["batch_size"]) == ("iris", 1, 1)
        assert first["latency_ms"] > 0
        assert json.loads(lines[1])["model"] is None
    else:
        assert lines[0].startswith(
            "request_id=abc-123 method=POST path=/v2/models/iris/infer status=200"
        )
        assert "model=iris version=1 batch_size=1" in lines[0]
        assert "\n" not in lines[2]


async def test_families_have_tritons_types(repository: Path) -> None:
    async with running_app(repository) as (client, _):
        assert (await client.post("/v2/models/iris/infer", json=IRIS)).status_code == 200
        response = await client.get("/metrics")
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    types = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    counters = [
        "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
        "nv_inference_exec_count", "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
    ]  # fmt: skip
    gauges = [
        "nv_inference_pending_request_count", "nv_model_load_duration_secs",
        "cinfer_model_state", "cinfer_model_instances", "process_resident_memory_bytes",
    ]  # fmt: skip
    histograms = ["cinfer_request_duration_seconds", "cinfer_queue_duration_seconds",
                  "cinfer_batch_size"]  # fmt: skip
    assert {name: types[name] for name in counters} == dict.fromkeys(counters, "counter")
    assert {name: types[name] for name in gauges} == dict.fromkeys(gauges, "gauge")
    assert {name: types[name] for name in histograms} == dict.fromkeys(histograms, "histogram")
    assert "unknown" not in types.values()


async def test_an_unbatched_request_counts_its_decoding_and_encoding(repository: Path) -> None:
    # iris has no [batching]: the request takes the scheduler's single-request path, where
    # nothing is joined or split; its compute_input and compute_output are then mostly the
    # JSON decoding and encoding, which perf_analyzer must not see as overhead (issue 11).
    async with running_app(repository) as (client, _):
        assert (await client.post("/v2/models/iris/infer", json=IRIS)).status_code == 200
        stats = (await client.get("/v2/models/iris/stats")).json()["model_stats"][0]
        m = samples((await client.get("/metrics")).text)
    iris = {"model": "iris", "version": "1"}
    inference = stats["inference_stats"]
    for key, metric in [
        ("compute_input", "nv_inference_compute_input_duration_us"),
        ("compute_output", "nv_inference_compute_output_duration_us"),
        ("compute_infer", "nv_inference_compute_infer_duration_us"),
        ("queue", "nv_inference_queue_duration_us"),
    ]:
        assert inference[key]["count"] == 1
        assert value(m, metric, **iris) == inference[key]["ns"] // 1000, key
    assert value(m, "nv_inference_compute_input_duration_us", **iris) > 0
    assert value(m, "nv_inference_compute_output_duration_us", **iris) > 0
    # The parts add up to no more than the request took in the server.
    parts = sum(inference[k]["ns"] for k in ("queue", "compute_input", "compute_infer",
                                             "compute_output"))  # fmt: skip
    assert parts <= inference["success"]["ns"]
    (batch,) = stats["batch_stats"]
    assert batch["batch_size"] == 1 and batch["compute_input"]["count"] == 1
    # The engine thread's own part: taking the request and counting its queue time before
    # the run (Python lines, microseconds), no longer recorded as exactly 0.
    assert batch["compute_input"]["ns"] > 0
