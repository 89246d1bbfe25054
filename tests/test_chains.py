"""Pipeline steps chained from engine thread to engine thread (chains.py): the same answers,
statistics, errors, batching and unloading as steps run one by one through the DataPlane."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from server.dataplane import DataPlane
from server.errors import InvalidRequest
from server.inference import InferInput, InferRequest
from server.reconciler import Reconciler
from tests import onnx_models
from tests.conftest import eventually, held

CHAIN = """\
engine = "pipeline"
max_batch_size = 8
[[inputs]]
name = "X"
datatype = "FP32"
shape = [16]
[[steps]]
name = "first"
model = "tiny"
inputs = { INPUT0 = "X" }
[[steps]]
name = "second"
model = "other"
inputs = { INPUT0 = "first.OUTPUT0" }
[[outputs]]
name = "Y"
datatype = "FP32"
shape = [16]
from = "second.OUTPUT0"
"""

#: tiny, then add_sub on tiny's answer and the pipeline's input (add_sub takes 4 rows).
SUBTRACT = """\
engine = "pipeline"
max_batch_size = 8
[[inputs]]
name = "X"
datatype = "FP32"
shape = [16]
[[steps]]
name = "first"
model = "tiny"
inputs = { INPUT0 = "X" }
[[steps]]
name = "minus"
model = "add_sub"
inputs = { A = "first.OUTPUT0", B = "X" }
[[outputs]]
name = "Y"
datatype = "FP32"
shape = [16]
from = "minus.DIFF"
"""


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[DataPlane]:
    """tiny and other (dense 16 -> 16; other batches), add_sub (16 wide, 4 rows at most),
    the pipelines `chain` (other(tiny(X))) and `subtract` (tiny(X) - X)."""
    root = tmp_path / "models"
    onnx_models.dense_folder(root, "tiny", 'engine = "onnxruntime"\nmax_batch_size = 8\n')
    batching = 'engine = "onnxruntime"\nmax_batch_size = 8\n[batching]\n'
    onnx_models.dense_folder(root, "other", batching, seed=1)
    built = onnx_models.add_sub(tmp_path / "built" / "model.onnx", width=16)
    onnx_models.model_folder(
        root, "add_sub", 'engine = "onnxruntime"\nmax_batch_size = 4\n', {1: built}
    )
    (onnx_models.model_folder(root, "chain", CHAIN) / "1").mkdir()
    (onnx_models.model_folder(root, "subtract", SUBTRACT) / "1").mkdir()
    dataplane = DataPlane(Reconciler(root), "startup", 50)
    await dataplane.start()
    try:
        await dataplane.wait_ready()
        yield dataplane
    finally:
        await dataplane.stop()


def x(rows: int, seed: int = 0) -> InferRequest:
    data = np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)
    return InferRequest([InferInput("X", "FP32", data)])


async def direct(plane: DataPlane, model: str, array: np.ndarray) -> np.ndarray:
    answer = await plane.infer(model, None, InferRequest([InferInput("INPUT0", "FP32", array)]))
    return answer.outputs["OUTPUT0"]


def counts(plane: DataPlane, model: str) -> tuple[int, int]:
    requests = plane.version(model, None).requests
    return requests.success, requests.failure


def executions(plane: DataPlane, model: str) -> list[tuple[int, int]]:
    """(executions, inferences) of each instance of `model`."""
    pool = plane.version(model, None).pool
    assert pool is not None
    return [(s.executions, s.inferences) for s in pool.stats]


@pytest.mark.anyio
async def test_chained_steps_answer_and_count_as_steps_run_one_by_one(plane: DataPlane) -> None:
    request = x(3)
    answer = await plane.infer("chain", None, request)
    data = request.inputs[0].array
    want = await direct(plane, "other", await direct(plane, "tiny", data))
    np.testing.assert_allclose(answer.outputs["Y"], want, rtol=1e-6)
    # The pipeline counts one request; each step model one request of its own, run by its
    # own instance (plus the direct requests above).
    assert counts(plane, "chain") == (1, 0)
    assert counts(plane, "tiny") == (2, 0) and counts(plane, "other") == (2, 0)
    assert executions(plane, "other") == [(2, 6)]
    tiny = plane.version("tiny", None).requests
    assert sum(tiny.latency.counts) == 2 and tiny.success_ns > 0


@pytest.mark.anyio
async def test_a_chained_step_that_refuses_its_request_is_named(plane: DataPlane) -> None:
    ok = await plane.infer("subtract", None, x(2))
    assert ok.outputs["Y"].shape == (2, 16)
    # Six rows pass tiny (8 at most) and are refused by add_sub (4): the check runs on the
    # engine thread that finished `first`, and the error names the step.
    with pytest.raises(InvalidRequest, match=r"^step 'minus' \(model add_sub\): input 'A': "):
        await plane.infer("subtract", None, x(6))
    assert counts(plane, "subtract") == (1, 1)
    assert counts(plane, "tiny") == (2, 0)
    assert counts(plane, "add_sub") == (1, 1)
    # The pools count nothing left pending: both chains have ended.
    for model in ("tiny", "add_sub"):
        pool = plane.version(model, None).pool
        assert pool is not None and pool.pending == 0
    again = await plane.infer("subtract", None, x(4))  # the instances serve on
    assert again.rows == 4


@pytest.mark.anyio
async def test_a_chained_step_batches_with_direct_requests(plane: DataPlane) -> None:
    other = plane.version("other", None).pool
    assert other is not None
    with held(other) as running:
        blocker = asyncio.ensure_future(direct(plane, "other", np.ones((1, 16), np.float32)))
        await eventually(running.is_set, "a request inside other's engine")
        chained = [asyncio.ensure_future(plane.infer("chain", None, x(2, s))) for s in range(3)]
        # Each chain's second step reaches other's queue from tiny's engine thread.
        await eventually(lambda: other._queue.qsize() == 3, "three second steps queued")
        late = asyncio.ensure_future(direct(plane, "other", np.ones((1, 16), np.float32)))
        await eventually(lambda: other._queue.qsize() == 4, "a direct request behind them")
    await asyncio.gather(blocker, late, *chained)
    # The held request ran alone; then the three second steps and the direct request ran
    # as one batch of 2 + 2 + 2 + 1 rows.
    assert executions(plane, "other") == [(2, 8)]
    assert counts(plane, "chain") == (3, 0) and counts(plane, "tiny") == (3, 0)


@pytest.mark.anyio
async def test_a_step_model_unloaded_while_a_chain_waits_in_it(plane: DataPlane) -> None:
    other = plane.version("other", None).pool
    assert other is not None
    with held(other) as running:
        answer = asyncio.ensure_future(plane.infer("chain", None, x(1)))
        await eventually(running.is_set, "the second step inside other's engine")
        unloading = asyncio.ensure_future(plane.unload_model("other"))
        await asyncio.sleep(0)
        assert not unloading.done() and not answer.done()  # the unload waits for the chain
    assert (await answer).rows == 1
    await unloading
    assert not plane.model_ready("chain", None)
