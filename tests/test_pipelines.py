"""The wiring of a pipeline's [[steps]]: parsed from model.toml, checked against the step
models' real model.toml configs, and ordered into concurrent waves."""

from __future__ import annotations

import pytest

from server import configfile
from server.errors import ConfigError
from server.model_config import ModelConfig
from server.pipelines import check, waves

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
