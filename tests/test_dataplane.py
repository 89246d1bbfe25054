from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from server.dataplane import DataPlane
from server.errors import InvalidRequest
from server.inference import InferInput, InferRequest
from server.model_config import ModelConfig
from server.models import Model, ModelState, ModelVersion
from server.reconciler import Reconciler
from tests import onnx_models
from tests.conftest import running_app


@pytest.mark.parametrize(
    ("device", "kind", "gpus"),
    [
        ("cpu", "KIND_CPU", []),
        ("CPU", "KIND_CPU", []),
        ("cuda:0", "KIND_GPU", [0]),
        ("cuda:3", "KIND_GPU", [3]),
        ("GPU", "KIND_GPU", [0]),
        ("GPU.1", "KIND_GPU", [1]),
    ],
)
def test_instance_group_follows_the_device_the_engine_resolved(
    tmp_path: Path, device: str, kind: str, gpus: list[int]
) -> None:
    reconciler = Reconciler(tmp_path)
    config = ModelConfig(engine="torch", instances=2, device=device)
    version = ModelVersion("m", 1, tmp_path, config, state=ModelState.READY)
    reconciler.models["m"] = Model("m", versions={1: version})
    group = DataPlane(reconciler).model_config("m", None)["instance_group"]
    assert group == [{"name": "m", "kind": kind, "count": 2, "gpus": gpus}]


# -- the DataPlane with no transport at all -----------------------------------------------------

ADD_SUB = """engine = "onnxruntime"
max_batch_size = 8

[[inputs]]
name = "A"
datatype = "FP32"
shape = [4]

[[inputs]]
name = "B"
datatype = "FP32"
shape = [4]

[[outputs]]
name = "SUM"
datatype = "FP32"
shape = [4]

[[outputs]]
name = "DIFF"
datatype = "FP32"
shape = [4]
"""


@pytest.fixture
async def add_sub(tmp_path: Path) -> AsyncIterator[DataPlane]:
    """A started DataPlane over one model, add_sub (SUM = A + B, DIFF = A - B), no transport."""
    root = tmp_path / "models"
    onnx_models.model_folder(
        root, "add_sub", ADD_SUB, {1: onnx_models.add_sub(tmp_path / "built" / "model.onnx")}
    )
    dataplane = DataPlane(Reconciler(root), "startup", 50)
    await dataplane.start()
    try:
        await dataplane.wait_ready()
        yield dataplane
    finally:
        await dataplane.stop()


@pytest.mark.anyio
async def test_the_dataplane_infers_checks_and_counts_without_any_transport(
    add_sub: DataPlane,
) -> None:
    from server.errors import InvalidRequest, NotFound
    from server.inference import InferInput, InferRequest, RequestedOutput

    dataplane = add_sub
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    request = InferRequest(
        [InferInput("A", "FP32", a), InferInput("B", "FP32", b)],
        outputs=[RequestedOutput("DIFF")],
        id="r1",
        model_name="add_sub",
    )
    response = await dataplane.infer("add_sub", None, request)
    assert (response.model_name, response.model_version, response.id) == ("add_sub", "1", "r1")
    assert list(response.outputs) == ["DIFF"] and response.rows == 2
    np.testing.assert_array_equal(response.outputs["DIFF"], a - b)
    streamed = [r async for r in dataplane.stream("add_sub", "1", request)]
    assert len(streamed) == 1
    np.testing.assert_array_equal(streamed[0].outputs["DIFF"], a - b)

    wrong = InferRequest([InferInput("A", "FP32", a[:, :3]), InferInput("B", "FP32", b)])
    with pytest.raises(InvalidRequest, match="input 'A'"):
        await dataplane.infer("add_sub", None, wrong)
    elsewhere = InferRequest(request.inputs, model_name="other")
    with pytest.raises(InvalidRequest, match=r"model_name .other.*add_sub"):
        await dataplane.infer("add_sub", None, elsewhere)
    with pytest.raises(NotFound):
        await dataplane.infer("ghost", None, request)

    stats = (await dataplane.model_statistics("add_sub", None))["model_stats"][0]
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 2 and inference["fail"]["count"] == 2
    assert stats["inference_count"] == 4  # rows, as Triton counts them


def test_the_core_imports_no_transport() -> None:
    """DataPlane, models, scheduler, reconciler and the token core load without HTTP."""
    import subprocess
    import sys

    code = (
        "import sys, server.dataplane, server.auth.guard, server.auth.store\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn')"
        " or m.startswith('server.http'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


IRIS_INPUT = InferInput("features", "FP32", np.ones((1, 4), np.float32))


def failures(dataplane: DataPlane) -> dict[str, int]:
    return dict(dataplane.version("iris", None).requests.failures)


@pytest.mark.anyio
async def test_model_name_and_version_in_the_body_must_match_the_target(repo: Path) -> None:
    onnx_models.copy_samples(repo)
    async with running_app(repo) as (_, dataplane):
        same = InferRequest([IRIS_INPUT], model_name="iris", model_version="1")
        assert (await dataplane.infer("iris", None, same)).model_version == "1"
        assert (
            await dataplane.infer("iris", "1", InferRequest([IRIS_INPUT], model_version=""))
        ).rows == 1
        with pytest.raises(
            InvalidRequest,
            match=r'^model_name "digits" in the body does not match the model "iris"',
        ):
            await dataplane.infer("iris", None, InferRequest([IRIS_INPUT], model_name="digits"))
        with pytest.raises(
            InvalidRequest,
            match=r'^model_version "2" in the body does not match version "1" of model "iris"',
        ):
            await dataplane.infer("iris", "1", InferRequest([IRIS_INPUT], model_version="2"))
        assert failures(dataplane) == {"REJECTED": 0, "CANCELED": 0, "BACKEND": 0, "OTHER": 2}


@pytest.mark.anyio
async def test_a_decoder_bug_is_not_counted_as_a_backend_failure(repo: Path) -> None:
    onnx_models.copy_samples(repo)

    def broken_decode() -> InferRequest:
        return {}["unhashable"]  # type: ignore[no-any-return]  # what issue 11's datatype {} hit

    async with running_app(repo) as (_, dataplane):
        with pytest.raises(KeyError):
            await dataplane.exchange("iris", None, broken_decode, lambda r: r)
        with pytest.raises(ZeroDivisionError):
            await dataplane.exchange(
                "iris", None, lambda: InferRequest([IRIS_INPUT]), lambda r: 1 / 0
            )
        assert failures(dataplane)["BACKEND"] == 0 and failures(dataplane)["OTHER"] == 2


@pytest.mark.anyio
async def test_a_signature_is_checked_once_per_version_and_never_caches_data(
    add_sub: DataPlane,
) -> None:
    from server.errors import InvalidRequest

    dataplane = add_sub
    alike = object()  # what a door gives requests with the same header
    for value in (1.0, 2.0):
        a = np.full((1, 4), value, np.float32)
        request = InferRequest(
            [InferInput("B", "FP32", np.zeros((1, 4), np.float32)), InferInput("A", "FP32", a)],
            signature=alike,
        )
        response = await dataplane.infer("add_sub", None, request)
        np.testing.assert_array_equal(response.outputs["SUM"], a)  # this request's data
    wrong = object()
    bad = [InferInput("A", "FP32", np.ones((1, 3), np.float32))]
    for _ in range(2):  # a failed check is not remembered as passed
        with pytest.raises(InvalidRequest, match="input 'A'"):
            await dataplane.infer("add_sub", None, InferRequest(bad, signature=wrong))
