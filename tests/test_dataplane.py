from __future__ import annotations

from pathlib import Path

import pytest

from server.dataplane import DataPlane
from server.model_config import ModelConfig
from server.models import Model, ModelState, ModelVersion
from server.reconciler import Reconciler


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
