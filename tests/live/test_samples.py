"""The shipped samples on a real server, through tritonclient: the digits model answers the
same on onnxruntime, OpenVINO and torch."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as triton

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
        client.close()
    probabilities, labels = answers["digits"]
    assert probabilities.shape == (8, 10) and labels.dtype == np.int64
    for name in ("digits_openvino", "digits_torch"):
        np.testing.assert_allclose(answers[name][0], probabilities, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(answers[name][1], labels)


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
