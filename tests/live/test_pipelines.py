"""Pipelines over a real server: a token limited to some models may call a pipeline only if
it may call every step's model; tokens from the real CLI, requests over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests import onnx_models
from tests.auth.test_guard import INFER
from tests.live import live_server
from tests.live.test_auth import create, env  # noqa: F401 - fixture

TWO_TINY = """\
engine = "pipeline"
max_batch_size = 8
[[inputs]]
name = "INPUT0"
datatype = "FP32"
shape = [16]
[[steps]]
name = "first"
model = "tiny"
inputs = { INPUT0 = "INPUT0" }
[[steps]]
name = "second"
model = "other"
inputs = { INPUT0 = "first.OUTPUT0" }
[[outputs]]
name = "OUTPUT0"
datatype = "FP32"
shape = [16]
from = "second.OUTPUT0"
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    batched = 'engine = "onnxruntime"\nmax_batch_size = 8\n'
    onnx_models.dense_folder(root, "tiny", batched, seed=0)
    onnx_models.dense_folder(root, "other", batched, seed=1)
    (onnx_models.model_folder(root, "two", TWO_TINY) / "1").mkdir()
    return root


def test_a_limited_token_calls_a_pipeline_only_with_every_step(
    repo: Path,
    env: dict[str, str],  # noqa: F811
) -> None:
    every = create(env, "--name", "every", "--scope", "infer", "--models", "two,tiny,other")
    partial = create(env, "--name", "partial", "--scope", "infer", "--models", "two,tiny")
    with live_server(repo, env=env) as (url, _), httpx.Client(base_url=url) as client:

        def infer(token: str, model: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"}
            return client.post(f"/v2/models/{model}/infer", json=INFER, headers=headers)

        answer = infer(every, "two")
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["name"] == "OUTPUT0"
        refused = infer(partial, "two")
        assert refused.status_code == 403
        assert refused.json() == {
            "error": "API token 'partial' may not use model 'other', a step of pipeline 'two'"
        }
        assert infer(partial, "tiny").status_code == 200
