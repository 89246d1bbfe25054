from __future__ import annotations

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
