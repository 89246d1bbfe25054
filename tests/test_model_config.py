from __future__ import annotations

import pytest

from server import configfile
from server.errors import ConfigError
from server.model_config import ModelConfig, TensorSpec, VersionPolicy

FULL = """\
engine = "onnxruntime"
max_batch_size = 32
instances = 2
description = "a model"
file = "net.onnx"

[[inputs]]
name = "INPUT0"
datatype = "FP32"
shape = [1024]

[[outputs]]
name = "OUTPUT0"
datatype = "FP16"
shape = [-1, 3]

[batching]
max_queue_delay_us = 100
preferred_batch_sizes = [4, 8]
max_queue_size = 16
timeout_us = 5000

[version_policy]
specific = [1, 3]

[parameters]
intra_op_threads = 1
allow_spinning = false
"""


def parse(text: str) -> ModelConfig:
    return configfile.parse(ModelConfig, configfile.loads(text, "model.toml"), "model.toml", text)


def test_every_field() -> None:
    config = parse(FULL)
    assert config.engine == "onnxruntime"
    assert config.max_batch_size == 32
    assert config.instances == 2
    assert config.description == "a model"
    assert config.file == "net.onnx"
    assert config.inputs == (TensorSpec(name="INPUT0", datatype="FP32", shape=(1024,)),)
    assert config.outputs == (TensorSpec(name="OUTPUT0", datatype="FP16", shape=(-1, 3)),)
    assert config.batching is not None
    assert config.batching.max_queue_delay_us == 100
    assert config.batching.preferred_batch_sizes == (4, 8)
    assert config.batching.max_queue_size == 16
    assert config.batching.timeout_us == 5000
    assert config.version_policy.specific == (1, 3)
    assert config.parameters == {"intra_op_threads": 1, "allow_spinning": False}
    assert config.batch_shape(config.inputs[0]) == (-1, 1024)


def test_defaults() -> None:
    config = parse('engine = "onnxruntime"\n')
    assert (config.max_batch_size, config.instances, config.batching, config.inputs) == (
        0,
        1,
        None,
        None,
    )
    assert config.device == "cpu"
    assert config.version_policy.select([1, 2, 3]) == [3]


@pytest.mark.parametrize(
    "device", ["cpu", "auto", "cuda", "cuda:0", "cuda:12", "CPU", "GPU", "GPU.1", "AUTO:GPU,CPU"]
)
def test_device_names(device: str) -> None:
    assert parse(f'engine = "onnxruntime"\ndevice = "{device}"\n').device == device


def test_batching_defaults() -> None:
    config = parse('engine = "onnxruntime"\nmax_batch_size = 8\n[batching]\n')
    assert config.batching is not None
    assert config.batching.max_queue_delay_us == 0
    assert config.batching.max_queue_size == 1024
    assert config.batching.timeout_us == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_size = 1\n", r"model.toml: engine: Field required"),
        (
            'engine = "onnxruntime"\n[batching]\nmax_queue_delay = 5\n',
            r"model.toml line 3: \[batching\] max_queue_delay: unknown key",
        ),
        (
            'engine = "onnxruntime"\n\n[cache]\nenable = true\n',
            r"model.toml line 4: \[cache\] enable: unknown key",
        ),
        (
            'engine = "onnxruntime"\n[cache]\nenabled = "maybe"\n',
            r"model.toml line 3: \[cache\] enabled: Input should be a valid boolean",
        ),
        (
            'engine = "onnxruntime"\ninstances = "two"\n',
            r"model.toml line 2: instances: Input should be a valid integer.*'two'",
        ),
        (
            'engine = "onnxruntime"\nmax_batch_size = -1\n',
            r"line 2: max_batch_size: Input should be greater than or equal to 0",
        ),
        (
            'engine = "onnxruntime"\n[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [0, 3]\n',
            r"\[inputs #1\]: Value error, tensor 'x': dimensions are -1 \(any\) or positive, got 0",
        ),
        (
            'engine = "onnxruntime"\n[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [-2]\n',
            r"line 5: \[inputs #1.shape #1\] *.*greater than or equal to -1|shape",
        ),
        (
            'engine = "onnxruntime"\n[[inputs]]\nname = "x"\ndatatype = "FLOAT"\nshape = [1]\n',
            r"line 4: \[inputs #1\] datatype: Input should be 'BOOL'",
        ),
        (
            'engine = "onnxruntime"\n[[inputs]]\nname = "x"\ndatatype = "FP32"\n',
            r"\[inputs #1\] shape: Field required",
        ),
        (
            'engine = "onnxruntime"\n[[outputs]]\nname = "a"\ndatatype = "FP32"\nshape = [1]\n'
            '[[outputs]]\nname = "b"\ndatatype = "FP32"\nshape = [1]\ncolour = "red"\n',
            r"line 10: \[outputs #2\] colour: unknown key",
        ),
        (
            'engine = "onnxruntime"\n[batching]\n',
            r"\[batching\] needs max_batch_size > 0",
        ),
        (
            'engine = "onnxruntime"\nmax_batch_size = 4\n[batching]\npreferred_batch_sizes = [8]\n',
            r"preferred_batch_sizes \[8\] exceed max_batch_size 4",
        ),
        (
            'engine = "onnxruntime"\n[version_policy]\nlatest = 1\nall = true\n',
            r"give one of latest, all, specific \(got latest, all\)",
        ),
        (
            'engine = "onnxruntime"\n[version_policy]\nlatest = 0\n',
            r"latest: Input should be greater",
        ),
        (
            'engine = "onnxruntime"\n[version_policy]\nspecific = []\n',
            r"specific = \[\] selects nothing",
        ),
        (
            'engine = "onnxruntime"\n[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [1]\n'
            '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [1]\n',
            r"inputs: duplicate tensor name\(s\) \['x'\]",
        ),
        ('engine = "onnxruntime"\nfile = "../etc/passwd"\n', r"file must be a file name"),
        ('engine = "onnxruntime"\n[parameters]\nthreads = [1, 2]\n', r"parameters.threads"),
        (
            'engine = "torch"\ndevice = "gpu"\n',
            r"line 2: device: Value error, device 'gpu': use cpu, cuda, cuda:N, auto, or an "
            r"OpenVINO device name such as GPU or GPU.1",
        ),
        ('engine = "torch"\ndevice = "cuda:x"\n', r"device 'cuda:x': use cpu"),
        (
            'engine = "onnxruntime"\npython = "/usr/bin/python3"\n',
            r'python is for engine = "python"',
        ),
        ('engine = "torch"\ntimeout_s = 5\n', r'timeout_s is for engine = "python" or "sklearn"'),
        ('engine = "python"\ntimeout_s = 0\n', r"timeout_s: Input should be greater than 0"),
        (
            'engine = "python"\n[[outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [1]\n'
            'method = "predict"\n',
            r"outputs: 'y': method = ... is for engine = \"sklearn\"",
        ),
        (
            'engine = "sklearn"\n[[outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [1]\n'
            'method = "fit"\n',
            r"method: Input should be 'predict', 'predict_proba', 'decision_function' or "
            r"'transform'",
        ),
    ],
)
def test_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(text)


def test_toml_syntax_error_has_the_line() -> None:
    with pytest.raises(ConfigError, match=r"model.toml: invalid TOML: .*line 2"):
        configfile.loads('engine = "onnxruntime"\nmax_batch_size = \n', "model.toml")


@pytest.mark.parametrize(
    ("policy", "available", "selected"),
    [
        (VersionPolicy(), [3, 1, 2], [3]),
        (VersionPolicy(latest=2), [3, 1, 2], [2, 3]),
        (VersionPolicy(all=True), [3, 1, 2], [1, 2, 3]),
        (VersionPolicy(specific=(1, 3, 9)), [1, 2, 3], [1, 3]),
        (VersionPolicy(specific=(9,)), [1, 2], []),
    ],
)
def test_version_policy(policy: VersionPolicy, available: list[int], selected: list[int]) -> None:
    assert policy.select(available) == selected
