"""The instance pool with a real ONNX Runtime engine: batching, splitting, resizing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from server.engines import LoadOptions
from server.engines.onnxruntime import ONNXRuntimeEngine
from server.errors import InvalidRequest, Unavailable
from server.model_config import ModelConfig
from server.rows import concat as _concat
from server.scheduler import Completions, InstancePool
from tests import onnx_models
from tests.conftest import eventually

pytestmark = pytest.mark.anyio


def make_pool(path: Path, instances: int = 1, **config: object) -> InstancePool:
    loop = asyncio.get_running_loop()
    engine = ONNXRuntimeEngine(LoadOptions(path=path, instances=instances))
    model = ModelConfig.model_validate({"engine": "onnxruntime", **config})
    pool = InstancePool("test:1", engine, model, Completions(loop), loop)
    pool.start(instances)
    return pool


def batch_counts(pool: InstancePool) -> dict[int, int]:
    counts: dict[int, int] = {}
    for stats in pool.stats:
        for size, batch in stats.batches.items():
            counts[size] = counts.get(size, 0) + batch.count
    return counts


@pytest.fixture
def dense(tmp_path: Path) -> Path:
    return onnx_models.dense(tmp_path / "dense.onnx", width=16, layers=2)


async def test_concurrent_requests_form_one_batch_and_each_gets_its_rows(dense: Path) -> None:
    pool = make_pool(dense, max_batch_size=8, batching={"max_queue_delay_us": 2_000_000})
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(8)]
    futures = [pool.submit({"INPUT0": x}, ["OUTPUT0"], 1) for x in xs]
    results = await asyncio.gather(*futures)
    reference = ort.InferenceSession(str(dense))
    for x, result in zip(xs, results):
        expected = reference.run(None, {"INPUT0": x})[0]
        np.testing.assert_allclose(result["OUTPUT0"], expected, rtol=1e-5, atol=1e-6)
    assert batch_counts(pool) == {8: 1}
    await asyncio.to_thread(pool.close)


async def test_multi_row_requests_split_back_in_order(dense: Path) -> None:
    pool = make_pool(dense, max_batch_size=8, batching={"max_queue_delay_us": 2_000_000})
    rows = [3, 3, 2]
    xs = [np.full((n, 16), i, dtype=np.float32) for i, n in enumerate(rows)]
    results = await asyncio.gather(*(pool.submit({"INPUT0": x}, ["OUTPUT0"], len(x)) for x in xs))
    reference = ort.InferenceSession(str(dense))
    for x, result in zip(xs, results):
        assert result["OUTPUT0"].shape == (len(x), 16)
        np.testing.assert_allclose(
            result["OUTPUT0"], reference.run(None, {"INPUT0": x})[0], rtol=1e-5, atol=1e-6
        )
    assert batch_counts(pool) == {8: 1}
    await asyncio.to_thread(pool.close)


async def test_preferred_batch_size_stops_the_wait(dense: Path) -> None:
    pool = make_pool(
        dense,
        max_batch_size=8,
        batching={"max_queue_delay_us": 300_000, "preferred_batch_sizes": [4]},
    )
    xs = [np.full((1, 16), i, dtype=np.float32) for i in range(6)]
    await asyncio.gather(*(pool.submit({"INPUT0": x}, ["OUTPUT0"], 1) for x in xs))
    assert batch_counts(pool) == {4: 1, 2: 1}
    await asyncio.to_thread(pool.close)


async def test_requests_of_different_shapes_are_not_mixed(tmp_path: Path) -> None:
    path = onnx_models.identity(tmp_path / "id.onnx", "FP32", ["batch", "width"])
    pool = make_pool(path, max_batch_size=8, batching={"max_queue_delay_us": 300_000})
    narrow = [np.full((1, 2), i, np.float32) for i in range(3)]
    wide = [np.full((1, 3), i, np.float32) for i in range(2)]
    futures = [pool.submit({"INPUT0": x}, ["OUTPUT0"], 1) for x in [*narrow, *wide]]
    results = await asyncio.gather(*futures)
    for x, result in zip([*narrow, *wide], results):
        np.testing.assert_array_equal(result["OUTPUT0"], x)
    assert batch_counts(pool) == {3: 1, 2: 1}
    await asyncio.to_thread(pool.close)


async def test_without_batching_each_request_runs_alone(dense: Path) -> None:
    pool = make_pool(dense, max_batch_size=8)
    xs = [np.full((2, 16), i, dtype=np.float32) for i in range(5)]
    await asyncio.gather(*(pool.submit({"INPUT0": x}, ["OUTPUT0"], 2) for x in xs))
    assert batch_counts(pool) == {2: 5}
    await asyncio.to_thread(pool.close)


async def test_a_lone_request_runs_without_waiting_for_a_batch(dense: Path) -> None:
    # max_queue_delay_us = 0: no wait, whatever the batch size.
    pool = make_pool(dense, max_batch_size=32, batching={})
    await pool.submit({"INPUT0": np.zeros((1, 16), np.float32)}, ["OUTPUT0"], 1)
    assert batch_counts(pool) == {1: 1}
    await asyncio.to_thread(pool.close)


async def test_engine_errors_reach_only_the_caller(tmp_path: Path) -> None:
    path = onnx_models.identity(tmp_path / "id.onnx", "FP32", ["batch", 4])
    pool = make_pool(path, max_batch_size=8)
    with pytest.raises(InvalidRequest, match="onnxruntime rejected the inputs"):
        await pool.submit({"INPUT0": np.zeros((1, 5), np.float32)}, ["OUTPUT0"], 1)
    ok = await pool.submit({"INPUT0": np.ones((1, 4), np.float32)}, ["OUTPUT0"], 1)
    assert ok["OUTPUT0"].tolist() == [[1, 1, 1, 1]]
    assert sum(s.failures for s in pool.stats) == 1
    await asyncio.to_thread(pool.close)


async def test_resize_under_load_loses_no_request(dense: Path) -> None:
    pool = make_pool(dense, instances=1, max_batch_size=8, batching={})
    stop = False
    done = 0

    async def client() -> None:
        nonlocal done
        while not stop:
            await pool.submit({"INPUT0": np.ones((1, 16), np.float32)}, ["OUTPUT0"], 1)
            done += 1

    clients = [asyncio.create_task(client()) for _ in range(4)]
    for size in (3, 1, 2):
        before = done
        await asyncio.to_thread(pool.resize, size)
        assert pool.instances == size
        await eventually(lambda n=before + 20: done >= n, f"20 answers from {size} instances")
    stop = True
    await asyncio.gather(*clients)  # none raised
    assert len(pool.engine._sessions) == 2  # type: ignore[attr-defined]
    await asyncio.to_thread(pool.close)


async def test_close_answers_queued_requests_and_refuses_new_ones(dense: Path) -> None:
    pool = make_pool(dense, max_batch_size=8)
    futures = [
        pool.submit({"INPUT0": np.ones((1, 16), np.float32)}, ["OUTPUT0"], 1) for _ in range(20)
    ]
    await pool.drain()
    assert all(f.done() and f.exception() is None for f in futures)
    await asyncio.to_thread(pool.close)
    with pytest.raises(Unavailable, match="unloading"):
        pool.submit({"INPUT0": np.ones((1, 16), np.float32)}, ["OUTPUT0"], 1)


@pytest.mark.parametrize(
    "rows",
    [
        # rows of 1024 floats: joined under the GIL
        [np.arange(1024 * n, dtype=np.float32).reshape(n, 1024) + n for n in (1, 3, 2)],
        # other dtypes and an empty request
        [np.full((n, 600), n, dtype=np.int64) for n in (2, 0, 1)],
        [np.arange(n * 700).reshape(n, 700) % 3 == 0 for n in (1, 2)],
        # too small for numpy to let go of the GIL: numpy's own copy
        [np.ones((1, 16), np.float32), np.zeros((2, 16), np.float32)],
        # non-contiguous, non-native byte order, objects, over JOIN_MAX_BYTES: numpy's copy
        [np.ones((2, 1200), np.float32)[:, ::2], np.zeros((1, 600), np.float32)],
        [np.ones((1, 600), ">f4"), np.ones((1, 600), ">f4") * 2],
        [np.array([[b"a"] * 600], dtype=object)] * 2,
        [np.ones((300, 1024), np.float32), np.ones((1, 1024), np.float32)],
    ],
)
def test_batch_inputs_are_joined_row_for_row_like_numpy(rows: list[np.ndarray]) -> None:
    joined = _concat(rows)
    expected = np.concatenate(rows)
    assert joined.shape == expected.shape
    assert joined.dtype.newbyteorder("=") == expected.dtype.newbyteorder("=")
    assert joined.dtype.isnative
    assert joined.flags.c_contiguous and joined.flags.writeable
    np.testing.assert_array_equal(joined, expected)
