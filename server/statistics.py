"""Triton's statistics extension (`GET /v2/models[/{m}[/versions/{v}]]/stats`), read from the
counters (counters.py).

The all-models answer is built in slices that give the event loop back between them: with
hundreds of models, building it in one go held up every request for as long (issue 11,
finding 12). Its cost is linear in the number of versions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .counters import durations, sum_instances
from .models import ModelVersion

#: Versions read between two yields to the event loop.
CHUNK = 16


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def statistics(version: ModelVersion) -> dict[str, Any]:
    """One entry of Triton's `model_stats`, as perf_analyzer and tritonclient parse it.

    compute_input includes decoding and checking the request, compute_output encoding the
    answer (Triton's meaning of them, which perf_analyzer reports as the server's input and
    output handling); batch_stats hold the scheduler's part only, per execution. Answers
    from the response cache count in success and cache_hit only, as Triton counts them.
    """
    totals = sum_instances(version.instance_stats)
    requests = version.requests
    times = durations(requests, totals)
    executed = times.requests
    cache = version.cache
    return {
        "name": version.name,
        "version": str(version.version),
        "last_inference": totals.last_inference_ms,
        "inference_count": totals.inferences,
        "execution_count": totals.executions,
        "inference_stats": {
            "success": _duration(requests.success, requests.success_ns),
            "fail": _duration(requests.failure, requests.failure_ns),
            "queue": _duration(executed, times.queue_ns),
            "compute_input": _duration(executed, times.compute_input_ns),
            "compute_infer": _duration(executed, times.compute_infer_ns),
            "compute_output": _duration(executed, times.compute_output_ns),
            "cache_hit": _duration(cache.hits, cache.hit_ns),
            "cache_miss": _duration(cache.misses, cache.miss_ns),
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


async def model_stats(versions: Sequence[ModelVersion], chunk: int = CHUNK) -> dict[str, Any]:
    """`{"model_stats": [...]}` for `versions`, yielding to the loop every `chunk` versions."""
    out = []
    for i, version in enumerate(versions):
        if i and not i % chunk:
            await asyncio.sleep(0)
        out.append(statistics(version))
    return {"model_stats": out}
