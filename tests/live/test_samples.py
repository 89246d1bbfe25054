"""The shipped samples on a real server, through tritonclient: the digits model answers the
same on onnxruntime, OpenVINO and torch; the mnist model names the digit in each of its example
files. One test runs the mnist model file with onnxruntime alone, no server: the sample itself
is right, whatever the server's decoding does."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import tritonclient.http as triton
from PIL import Image

from server.model_config import ModelConfig
from tests.live import live_server
from tests.onnx_models import SAMPLES


def test_every_engine_serves_the_digits_sample(repo: Path) -> None:
    shutil.copytree(SAMPLES, repo, dirs_exist_ok=True)
    images = np.random.default_rng(1).integers(0, 17, (8, 64)).astype(np.float32)
    with live_server(repo) as (url, _):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        answers = {}
        for name, platform in [
            ("digits", "onnxruntime_onnx"),
            ("digits_openvino", "openvino"),
            ("digits_torch", "pytorch_libtorch"),
        ]:
            assert client.get_model_metadata(name)["platform"] == platform
            image = triton.InferInput("image", [8, 64], "FP32")
            image.set_data_from_numpy(images, binary_data=True)
            result = client.infer(
                name,
                [image],
                outputs=[
                    triton.InferRequestedOutput("probabilities", binary_data=True),
                    triton.InferRequestedOutput("label", binary_data=True),
                ],
            )
            answers[name] = (result.as_numpy("probabilities"), result.as_numpy("label"))
        # The digits_engines pipeline runs the three at once and answers each one's label.
        assert client.get_model_metadata("digits_engines")["platform"] == "ensemble"
        image = triton.InferInput("image", [8, 64], "FP32")
        image.set_data_from_numpy(images, binary_data=True)
        together = client.infer("digits_engines", [image])
        # digits_uint8: a Python step rescales 0..255 pixels, then the ONNX model classifies.
        pixels = np.round(images * 255 / 16).astype(np.uint8)
        rescaled = pixels.astype(np.float32) * (np.float32(16) / np.float32(255))
        image = triton.InferInput("image", [8, 64], "FP32")
        image.set_data_from_numpy(rescaled, binary_data=True)
        direct = client.infer("digits", [image]).as_numpy("label")
        raw = triton.InferInput("pixels", [8, 64], "UINT8")
        raw.set_data_from_numpy(pixels, binary_data=True)
        piped = client.infer("digits_uint8", [raw])
        assert client.get_model_metadata("digits_rescale")["platform"] == "python"
        client.close()
    np.testing.assert_array_equal(piped.as_numpy("label"), direct)
    assert piped.as_numpy("probabilities").shape == (8, 10)
    probabilities, labels = answers["digits"]
    assert probabilities.shape == (8, 10) and labels.dtype == np.int64
    for name in ("digits_openvino", "digits_torch"):
        np.testing.assert_allclose(answers[name][0], probabilities, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(answers[name][1], labels)
    for engine in ("onnxruntime", "openvino", "torch"):
        np.testing.assert_array_equal(together.as_numpy(f"label_{engine}"), labels)


def test_the_mnist_sample_reads_its_example_images_and_names_the_digits(repo: Path) -> None:
    shutil.copytree(SAMPLES / "mnist", repo / "mnist")
    examples = sorted((repo / "mnist").glob("digit-*"))
    assert len(examples) >= 4 and {p.suffix for p in examples} == {".png", ".jpg"}
    names = (repo / "mnist" / "labels.txt").read_text().split()
    with live_server(repo) as (url, _):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        files = np.array([p.read_bytes() for p in examples], dtype=np.object_)
        image = triton.InferInput("image", [len(examples)], "BYTES")
        image.set_data_from_numpy(files, binary_data=True)
        wanted = triton.InferRequestedOutput("probabilities", binary_data=True, class_count=1)
        top = client.infer("mnist", [image], outputs=[wanted]).as_numpy("probabilities")
        client.close()
        for path, (best,) in zip(examples, top, strict=True):
            digit = int(path.stem.removeprefix("digit-"))
            score, index, label = best.decode().split(":")
            assert (int(index), label) == (digit, names[digit]) and float(score) > 0.5, path
        with httpx.Client(base_url=url) as http:  # the README's curl, as a form upload
            answer = http.post(
                "/v2/models/mnist/infer?classification=2",
                files={"image": ("d.jpg", (repo / "mnist" / "digit-7.jpg").read_bytes())},
            )
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"][0].endswith(":7:seven")


def test_the_mnist_model_file_names_the_digit_of_each_example_image() -> None:
    """repository/mnist/1/model.onnx on its example files, each decoded with Pillow and made
    into the tensor the way model.toml's [images.image] says: (pixel * scale - mean) / std."""
    folder = SAMPLES / "mnist"
    config = ModelConfig.model_validate(tomllib.loads((folder / "model.toml").read_text()))
    spec = config.images["image"]
    assert (spec.color, spec.layout, spec.datatype) == ("grayscale", "NCHW", "FP32")
    height, width = spec.size
    examples = sorted(folder.glob("digit-*"))
    assert len(examples) >= 4 and {p.suffix for p in examples} == {".png", ".jpg"}
    pixels = np.stack(
        [
            np.asarray(
                Image.open(p).convert("L").resize((width, height), Image.Resampling.BILINEAR),
                dtype=np.float32,
            )
            for p in examples
        ]
    )[:, None]  # [N, 1, H, W]
    tensor = (pixels * np.float32(spec.scale) - np.float32(spec.mean[0])) / np.float32(spec.std[0])
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"))
    probabilities, label = session.run(["probabilities", "label"], {"image": tensor})
    digits = [int(p.stem.removeprefix("digit-")) for p in examples]
    assert label[:, 0].tolist() == digits, examples
    assert probabilities.argmax(axis=1).tolist() == digits
    assert (probabilities.max(axis=1) > 0.5).all(), probabilities.max(axis=1)
    names = (folder / config.labels["probabilities"]).read_text().splitlines()
    assert len(names) == 10 and all(names), names
