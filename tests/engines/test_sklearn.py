"""The sklearn engine against real scikit-learn estimators, compared with scikit-learn's own
answers, and its load-time checks."""

from __future__ import annotations

import pickle
import tomllib
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from server.engines import LoadOptions
from server.engines.sklearn import SklearnEngine
from server.errors import ModelLoadError
from server.model_config import ModelConfig, TensorSpec
from tests.onnx_models import SAMPLES

FEATURES = TensorSpec(name="features", datatype="FP64", shape=(-1, 4))


def spec(name: str, datatype: str, shape: tuple[int, ...], method: str) -> TensorSpec:
    return TensorSpec(name=name, datatype=datatype, shape=shape, method=method)  # type: ignore[arg-type]


def engine(
    path: Path, outputs: tuple[TensorSpec, ...], inputs: tuple[TensorSpec, ...] = (FEATURES,)
) -> SklearnEngine:
    return SklearnEngine(LoadOptions(path=path, declared_inputs=inputs, declared_outputs=outputs))


def saved(tmp_path: Path, estimator: object, name: str = "model.joblib") -> Path:
    folder = tmp_path / "m" / "1"
    folder.mkdir(parents=True)
    path = folder / name
    if name.endswith(".pkl"):
        path.write_bytes(pickle.dumps(estimator))
    else:
        joblib.dump(estimator, path)
    return path


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    data = load_iris()
    return data.data, data.target_names[data.target]


def test_the_iris_sample_answers_what_scikit_learn_answers(tmp_path: Path) -> None:
    sample = SAMPLES / "iris_sklearn"
    config = ModelConfig.model_validate(tomllib.loads((sample / "model.toml").read_text()))
    full = [
        t.model_copy(update={"shape": config.batch_shape(t)})
        for t in (*(config.inputs or ()), *(config.outputs or ()))
    ]
    path = sample / "1" / "model.joblib"
    loaded = SklearnEngine(
        LoadOptions(path=path, declared_inputs=full[:1], declared_outputs=full[1:])
    )
    try:
        x = load_iris().data.astype(np.float32)
        result = loaded.run(0, {"features": x}, ["species", "probabilities"])
    finally:
        loaded.close()
    pipeline = joblib.load(path)
    assert result["species"].ravel().tolist() == [s.encode() for s in pipeline.predict(x)]
    np.testing.assert_allclose(
        result["probabilities"], pipeline.predict_proba(x).astype(np.float32), rtol=1e-6
    )
    assert result["probabilities"].dtype == np.float32 and result["species"].shape == (150, 1)


def test_predict_predict_proba_and_decision_function_match_the_estimator(
    tmp_path: Path, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = iris
    model = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=500))])
    model.fit(x, y)
    outputs = (
        spec("label", "BYTES", (-1,), "predict"),
        spec("proba", "FP64", (-1, 3), "predict_proba"),
        spec("scores", "FP32", (-1, 3), "decision_function"),
    )
    loaded = engine(saved(tmp_path, model), outputs)
    try:
        result = loaded.run(0, {"features": x[:20]}, ["label", "proba", "scores"])
    finally:
        loaded.close()
    assert result["label"].tolist() == [s.encode() for s in model.predict(x[:20])]
    np.testing.assert_array_equal(result["proba"], model.predict_proba(x[:20]))
    np.testing.assert_allclose(result["scores"], model.decision_function(x[:20]), rtol=1e-5)


def test_transform_and_a_pickle_file(tmp_path: Path, iris: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = iris
    scaler = StandardScaler().fit(x)
    loaded = engine(
        saved(tmp_path, scaler, "model.pkl"), (spec("scaled", "FP64", (-1, 4), "transform"),)
    )
    try:
        result = loaded.run(0, {"features": x[:5]}, ["scaled"])
    finally:
        loaded.close()
    np.testing.assert_array_equal(result["scaled"], scaler.transform(x[:5]))


def test_integer_labels_into_int64_and_a_column_shape(
    tmp_path: Path, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = iris
    model = LinearSVC().fit(x, load_iris().target)
    loaded = engine(saved(tmp_path, model), (spec("label", "INT64", (-1, 1), "predict"),))
    try:
        result = loaded.run(0, {"features": x[::30]}, ["label"])
    finally:
        loaded.close()
    assert result["label"].tolist() == [[int(v)] for v in model.predict(x[::30])]


def test_the_feature_count_is_checked_at_load(
    tmp_path: Path, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = iris
    model = LogisticRegression(max_iter=500).fit(x, y)
    three = TensorSpec(name="features", datatype="FP64", shape=(-1, 3))
    with pytest.raises(ModelLoadError) as caught:
        engine(saved(tmp_path, model), (spec("label", "BYTES", (-1,), "predict"),), (three,))
    assert str(caught.value) == (
        "inputs.features: shape [-1, 3] gives 3 features, but the LogisticRegression in "
        "model.joblib takes 4 (n_features_in_)"
    )


def test_a_method_the_estimator_lacks_and_two_inputs_are_load_errors(
    tmp_path: Path, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = iris
    path = saved(tmp_path, StandardScaler().fit(x))
    with pytest.raises(
        ModelLoadError,
        match=r"the StandardScaler in it has no method for output "
        r"label \(predict_proba\)",
    ):
        engine(path, (spec("label", "FP64", (-1, 3), "predict_proba"),))
    with pytest.raises(
        ModelLoadError,
        match=r"takes one input, the feature matrix; model.toml "
        r"declares 2 \(features, other\)",
    ):
        engine(
            path,
            (spec("scaled", "FP64", (-1, 4), "transform"),),
            (FEATURES, TensorSpec(name="other", datatype="FP64", shape=(-1, 4))),
        )


def test_a_file_that_is_not_a_model_is_a_load_error(tmp_path: Path) -> None:
    folder = tmp_path / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "model.joblib").write_bytes(b"not a pickle at all")
    with pytest.raises(ModelLoadError, match=r"model.joblib failed to load: "):
        engine(folder / "model.joblib", (spec("y", "FP64", (-1,), "predict"),))
