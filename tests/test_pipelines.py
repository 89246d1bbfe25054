"""The wiring of a pipeline's [[steps]]: parsed from model.toml, checked against the step
models' real model.toml configs, and ordered into concurrent waves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from server import configfile
from server.dataplane import DataPlane
from server.errors import ConfigError, InvalidRequest, Unavailable
from server.inference import InferInput, InferRequest
from server.model_config import ModelConfig
from server.models import ModelState
from server.pipelines import check, waves
from server.reconciler import Reconciler
from tests import onnx_models
from tests.conftest import eventually, held

TINY = """\
engine = "onnxruntime"
max_batch_size = 8
[[inputs]]
name = "INPUT0"
datatype = "FP32"
shape = [16]
[[outputs]]
name = "OUTPUT0"
datatype = "FP32"
shape = [16]
"""

TWO = """\
engine = "onnxruntime"
max_batch_size = 8
[[inputs]]
name = "A"
datatype = "FP32"
shape = [16]
[[inputs]]
name = "B"
datatype = "FP32"
shape = [-1]
[[outputs]]
name = "SUM"
datatype = "FP32"
shape = [16]
"""

PIPELINE = """\
engine = "pipeline"
max_batch_size = 8
[[inputs]]
name = "X"
datatype = "FP32"
shape = [16]
[[steps]]
name = "a"
model = "tiny"
inputs = { INPUT0 = "X" }
[[steps]]
name = "b"
model = "tiny"
inputs = { INPUT0 = "X" }
[[steps]]
name = "c"
model = "two"
inputs = { A = "a.OUTPUT0", B = "b.OUTPUT0" }
[[outputs]]
name = "Y"
datatype = "FP32"
shape = [16]
from = "c.SUM"
"""


def parse(text: str) -> ModelConfig:
    return configfile.parse(ModelConfig, configfile.loads(text, "model.toml"), "model.toml", text)


def step_configs(pipeline: ModelConfig) -> dict[str, ModelConfig]:
    models = {"tiny": parse(TINY), "two": parse(TWO)}
    return {s.name: models[s.model] for s in pipeline.steps if s.model in models}


def test_mapping_parsed_and_checked() -> None:
    config = parse(PIPELINE)
    assert [(s.name, s.model, s.inputs) for s in config.steps] == [
        ("a", "tiny", {"INPUT0": "X"}),
        ("b", "tiny", {"INPUT0": "X"}),
        ("c", "two", {"A": "a.OUTPUT0", "B": "b.OUTPUT0"}),
    ]
    assert config.outputs is not None and config.outputs[0].source == "c.SUM"
    check("p", config, step_configs(config))


def test_independent_steps_share_a_wave() -> None:
    config = parse(PIPELINE)
    assert [[s.name for s in wave] for wave in waves(config.steps)] == [["a", "b"], ["c"]]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('model = "two"', 'model = "nope"', "pipeline 'p', step 'c': model 'nope' is not in"),
        ('B = "b.OUTPUT0"', 'B = "c.SUM"', "step 'c': inputs.B = 'c.SUM': step 'c' is not an"),
        ('B = "b.OUTPUT0"', 'B = "z.OUT"', "step 'c': inputs.B = 'z.OUT': step 'z' is not an"),
        ('B = "b.OUTPUT0"', 'B = "b.NOPE"', "step 'b' has no output 'NOPE'"),
        ('B = "b.OUTPUT0"', 'B = "Q"', "inputs.B = 'Q': no pipeline input of that name"),
        (', B = "b.OUTPUT0"', "", "step 'c': input 'B' of model 'two' is not mapped"),
        ('A = "a.OUTPUT0"', 'A = "a.OUTPUT0", C = "X"', "inputs.C: model 'two' has no input"),
        ('from = "c.SUM"', 'from = "c.NOPE"', "outputs.Y: from = 'c.NOPE': step 'c' has no"),
        ('from = "c.SUM"', 'from = "X"', "outputs.Y: from = 'X' must be \"step.OUTPUT\""),
        ('name = "b"', 'name = "a"', "step 'a': a step of that name comes earlier"),
    ],
)
def test_wiring_errors_name_the_step_and_key(old: str, new: str, message: str) -> None:
    config = parse(PIPELINE.replace(old, new, 1))
    with pytest.raises(ConfigError, match=r"^pipeline 'p'") as info:
        check("p", config, step_configs(config))
    assert message in str(info.value)


def test_datatypes_and_shapes_must_agree() -> None:
    config = parse(PIPELINE.replace('datatype = "FP32"', 'datatype = "INT32"', 1))
    with pytest.raises(ConfigError, match=r"step 'a': inputs\.INPUT0 = 'X': datatype INT32 where"):
        check("p", config, step_configs(config))
    config = parse(PIPELINE.replace("shape = [16]", "shape = [15]", 1))
    with pytest.raises(ConfigError, match=r"inputs.INPUT0 = 'X': shape \[-1, 15\] does not fit"):
        check("p", config, step_configs(config))
    # -1 matches anything: B is [-1, -1] and is fed [-1, 16].
    config = parse(PIPELINE)
    check("p", config, step_configs(config))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (PIPELINE.replace("[[steps]]", "[[nosteps]]"), "nosteps: unknown key"),
        ('engine = "pipeline"\n', "needs at least one"),
        (TINY + '[[steps]]\nname = "a"\nmodel = "m"\ninputs = {}\n', "are for engine"),
        (PIPELINE.replace('from = "c.SUM"\n', ""), "needs from"),
    ],
)
def test_model_toml_rules(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(text)


def test_from_is_only_for_pipelines() -> None:
    with pytest.raises(ConfigError, match=r"'OUTPUT0': from = \.\.\. is for engine"):
        parse(TINY + 'from = "a.B"\n')


# -- run by a real DataPlane over real ONNX models ------------------------------------------

LIVE = """\
engine = "pipeline"
max_batch_size = 8
[[inputs]]
name = "X"
datatype = "FP32"
shape = [16]
[[steps]]
name = "a"
model = "tiny"
inputs = { INPUT0 = "X" }
[[steps]]
name = "b"
model = "other"
inputs = { INPUT0 = "X" }
[[steps]]
name = "c"
model = "add_sub"
inputs = { A = "a.OUTPUT0", B = "b.OUTPUT0" }
[[outputs]]
name = "Y"
datatype = "FP32"
shape = [16]
from = "c.DIFF"
"""


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[DataPlane]:
    """tiny and other (dense 16 -> 16, two seeds), add_sub (16 wide, max_batch_size 4) and
    the pipeline `p` = tiny(X) - other(X), its version folder empty."""
    root = tmp_path / "models"
    batched = 'engine = "onnxruntime"\nmax_batch_size = 8\n'
    onnx_models.dense_folder(root, "tiny", batched, seed=0)
    onnx_models.dense_folder(root, "other", batched, seed=1)
    built = onnx_models.add_sub(tmp_path / "built" / "model.onnx", width=16)
    onnx_models.model_folder(
        root, "add_sub", 'engine = "onnxruntime"\nmax_batch_size = 4\n', {1: built}
    )
    (onnx_models.model_folder(root, "p", LIVE) / "1").mkdir()
    dataplane = DataPlane(Reconciler(root), "startup", 50)
    await dataplane.start()
    try:
        await dataplane.wait_ready()
        yield dataplane
    finally:
        await dataplane.stop()


def x(rows: int) -> InferRequest:
    data = np.random.default_rng(rows).standard_normal((rows, 16)).astype(np.float32)
    return InferRequest([InferInput("X", "FP32", data)])


async def direct(dataplane: DataPlane, model: str, name: str, array: np.ndarray) -> np.ndarray:
    answer = await dataplane.infer(model, None, InferRequest([InferInput(name, "FP32", array)]))
    return answer.outputs["OUTPUT0"]


async def success(dataplane: DataPlane, model: str) -> tuple[int, int]:
    stats = (await dataplane.model_statistics(model, None))["model_stats"][0]["inference_stats"]
    return stats["success"]["count"], stats["fail"]["count"]


@pytest.mark.anyio
async def test_a_pipeline_runs_its_steps_through_the_dataplane(plane: DataPlane) -> None:
    request = x(3)
    answer = await plane.infer("p", None, request)
    assert (answer.model_name, list(answer.outputs), answer.rows) == ("p", ["Y"], 3)
    data = request.inputs[0].array
    want = await direct(plane, "tiny", "INPUT0", data) - await direct(
        plane, "other", "INPUT0", data
    )
    np.testing.assert_allclose(answer.outputs["Y"], want, rtol=1e-6)
    # The pipeline counts its request once; each step model counts the step's request.
    assert await success(plane, "p") == (1, 0)
    assert await success(plane, "tiny") == (2, 0) and await success(plane, "add_sub") == (1, 0)
    metadata = plane.model_metadata("p", None)
    assert metadata["state"] == "READY" and metadata["inputs"][0]["shape"] == [-1, 16]


@pytest.mark.anyio
async def test_a_failing_step_is_named_and_the_pipeline_counts_one_failure(
    plane: DataPlane,
) -> None:
    with pytest.raises(InvalidRequest, match=r"^step 'c' \(model add_sub\): input 'A': batch"):
        await plane.infer("p", None, x(6))  # add_sub takes 4 rows at most
    assert await success(plane, "p") == (0, 1)
    with pytest.raises(InvalidRequest, match="input 'X'"):  # checked before any step runs
        await plane.infer("p", None, InferRequest([InferInput("X", "FP32", np.ones((1, 3)))]))
    assert await success(plane, "p") == (0, 2)
    assert await success(plane, "tiny") == (1, 0)  # the 6 rows ran step a, not the 3 wide


@pytest.mark.anyio
async def test_a_step_unloaded_and_reloaded(plane: DataPlane) -> None:
    await plane.unload_model("other")
    found = plane.version("p", None)
    assert found.state is ModelState.UNAVAILABLE
    assert found.reason.startswith("step 'b': model 'other' is not in the repository")
    with pytest.raises(Unavailable, match="step 'b': model 'other'"):
        await plane.infer("p", None, x(1))
    await plane.load_model("other", None)
    assert plane.model_ready("p", None)
    assert (await plane.infer("p", None, x(2))).rows == 2


@pytest.mark.anyio
async def test_a_pipeline_whose_wiring_does_not_fit_its_steps_is_unavailable_with_why(
    plane: DataPlane,
) -> None:
    folder = plane.reconciler.root / "p"
    (folder / "model.toml").write_text(LIVE.replace("shape = [16]", "shape = [8]", 1))
    await plane.load_model("p", None)
    found = plane.version("p", None)
    assert found.state is ModelState.UNAVAILABLE
    assert "step 'a': inputs.INPUT0 = 'X': shape [-1, 8] does not fit [-1, 16]" in found.reason


@pytest.mark.anyio
async def test_independent_steps_run_concurrently(plane: DataPlane) -> None:
    # Step a is held inside tiny's engine; step b (other) runs and finishes meanwhile.
    tiny = plane.version("tiny", None).pool
    assert tiny is not None
    with held(tiny) as running:
        answer = asyncio.ensure_future(plane.infer("p", None, x(2)))
        await eventually(running.is_set, "step a inside tiny's engine")
        await eventually(lambda: plane.version("other", None).requests.success == 1, "step b done")
        assert not answer.done()
    assert (await answer).rows == 2
