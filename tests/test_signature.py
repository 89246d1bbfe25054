from __future__ import annotations

import pytest

from server.errors import ModelLoadError
from server.model_config import ModelConfig, TensorSpec
from server.signature import resolve

FILE_IN = [TensorSpec(name="x", datatype="FP32", shape=(-1, 4))]
FILE_OUT = [
    TensorSpec(name="y", datatype="FP32", shape=(-1, 3)),
    TensorSpec(name="z", datatype="INT64", shape=(-1, 1)),
]


def config(**kw: object) -> ModelConfig:
    return ModelConfig.model_validate({"engine": "onnxruntime", **kw})


def t(name: str, datatype: str, shape: list[int]) -> dict[str, object]:
    return {"name": name, "datatype": datatype, "shape": shape}


def test_derived_without_batching() -> None:
    inputs, outputs = resolve(config(), FILE_IN, FILE_OUT)
    assert inputs == tuple(FILE_IN)
    assert outputs == tuple(FILE_OUT)


def test_derived_with_batching_strips_the_batch_dim() -> None:
    inputs, outputs = resolve(config(max_batch_size=8), FILE_IN, FILE_OUT)
    assert [i.shape for i in inputs] == [(4,)]
    assert [o.shape for o in outputs] == [(3,), (1,)]


def test_declared_subset_of_outputs_and_minus_one_takes_the_file_size() -> None:
    inputs, outputs = resolve(
        config(max_batch_size=8, inputs=[t("x", "FP32", [-1])], outputs=[t("z", "INT64", [1])]),
        FILE_IN,
        FILE_OUT,
    )
    assert inputs == (TensorSpec(name="x", datatype="FP32", shape=(4,)),)
    assert outputs == (TensorSpec(name="z", datatype="INT64", shape=(1,)),)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"inputs": [t("q", "FP32", [-1, 4])]},
            r"declared input 'q' is not in the model file \(it has: x\)",
        ),
        (
            {"inputs": [t("x", "FP64", [-1, 4])]},
            r"input 'x': declared datatype FP64, model file has FP32",
        ),
        (
            {"inputs": [t("x", "FP32", [-1, 4, 1])]},
            r"input 'x': declared shape \[-1, 4, 1\] \(rank 3\) but the model file has \[-1, 4\] \(rank 2\)",
        ),
        (
            {"max_batch_size": 4, "inputs": [t("x", "FP32", [5])]},
            r"input 'x': declared shape \[-1, 5\] but the model file has \[-1, 4\] \(dim 1: 5 vs 4\)",
        ),
        (
            {"max_batch_size": 4, "outputs": [t("y", "FP32", [3, 1])]},
            r"output 'y': declared shape \[-1, 3, 1\] \(rank 3, batch dim included\)",
        ),
    ],
)
def test_mismatch_names_the_tensor_and_both_values(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        resolve(config(**kw), FILE_IN, FILE_OUT)


def test_undeclared_file_input_is_an_error() -> None:
    two = [*FILE_IN, TensorSpec(name="w", datatype="FP32", shape=(-1, 4))]
    with pytest.raises(ModelLoadError, match=r"model file input\(s\) \['w'\] are not declared"):
        resolve(config(inputs=[t("x", "FP32", [-1, 4])]), two, FILE_OUT)


def test_batching_needs_a_dynamic_first_dim() -> None:
    fixed = [TensorSpec(name="x", datatype="FP32", shape=(1, 4))]
    with pytest.raises(ModelLoadError, match=r"max_batch_size > 0 needs a dynamic first"):
        resolve(config(max_batch_size=4), fixed, FILE_OUT)
