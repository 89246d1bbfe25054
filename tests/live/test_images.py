"""Image inputs on a real server: files made here (JPEG, PNG, WebP, grayscale, RGBA, odd sizes)
sent through tritonclient (binary BYTES), JSON base64, multipart and raw bodies; the tensors
the model gets equal a reference preprocessing written here with Pillow and numpy, to 1e-5;
every bad file is a 400 naming the input and the element; the classification extension.

The models are identities (the output is the input tensor), so what the server made of each
file is what comes back.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image, ImageOps

from server import decoding
from tests import onnx_models
from tests.live import live_server

STRETCH = """engine = "onnxruntime"
max_batch_size = 8

[images.INPUT0]
color = "rgb"
size = [6, 8]
resize = "stretch"
scale = 0.00392156862745098
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
layout = "NCHW"
"""
PAD = """engine = "onnxruntime"
max_batch_size = 8

[images.INPUT0]
color = "grayscale"
size = [10, 10]
resize = "pad"
layout = "NHWC"
"""
CROP = """engine = "onnxruntime"
max_batch_size = 0

[images.INPUT0]
color = "bgr"
size = [5, 7]
resize = "crop"
scale = 2.0
mean = [10.0]
layout = "NCHW"
"""
SCORES = """engine = "onnxruntime"
max_batch_size = 8

[labels]
OUTPUT0 = "classes.txt"
"""
LABELS = ["ant", "bee", "cat", "dog", "eel"]
BROKEN = {
    "badsize": STRETCH.replace("size = [6, 8]", "size = [8, 6]"),
    "badcolor": STRETCH.replace('color = "rgb"', 'color = "grayscale"').replace(
        "mean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n", ""
    ),
    "badtype": STRETCH.replace('layout = "NCHW"', 'layout = "NCHW"\ndatatype = "UINT8"'),
    "badinput": STRETCH.replace("[images.INPUT0]", "[images.pixels]"),
    "nolabels": STRETCH + '\n[labels]\nOUTPUT0 = "missing.txt"\n',
}
REASONS = {
    "badsize": "images.INPUT0: size [8, 6], rgb, NCHW makes [3, 8, 6] per image, but the "
    "model's input 'INPUT0' is [3, 6, 8]",
    "badcolor": "change color or layout: grayscale has 1 channel(s)",
    "badtype": "images.INPUT0.datatype: UINT8, but the model's input 'INPUT0' is FP32",
    "badinput": "images.pixels: the model has no input 'pixels' (it takes: INPUT0)",
    "nolabels": "labels.OUTPUT0: no file ",
}
MAX_PIXELS = 20_000
MAX_BYTES = 2 << 20


def _write(root: Path, name: str, toml: str, shape: list[int | str | None]) -> None:
    built = onnx_models.identity(root.parent / "built" / name / "model.onnx", "FP32", shape)
    onnx_models.model_folder(root, name, toml, {1: built})


@pytest.fixture(scope="module")
def server_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    root = tmp_path_factory.mktemp("images") / "models"
    _write(root, "stretch", STRETCH, ["batch", 3, 6, 8])
    _write(root, "pad", PAD, ["batch", 10, 10, 1])
    _write(root, "crop", CROP, [1, 3, 5, 7])
    _write(root, "scores", SCORES, ["batch", 5])
    (root / "scores" / "classes.txt").write_text("\n".join(LABELS) + "\n")
    for name, toml in BROKEN.items():
        _write(root, name, toml, ["batch", 3, 6, 8])
    env = {"CINFER_SERVER__MAX_IMAGE_PIXELS": str(MAX_PIXELS),
           "CINFER_SERVER__MAX_REQUEST_BYTES": str(MAX_BYTES)}  # fmt: skip
    with live_server(root, env=env) as (url, proc):
        yield url, proc


@pytest.fixture(scope="module")
def server(server_process: tuple[str, subprocess.Popen[str]]) -> str:
    return server_process[0]


# -- images made here, and the reference preprocessing ------------------------------------


def picture(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def reference(data: bytes, toml: str) -> np.ndarray:
    """What the model should get for one file, computed here from the declaration."""
    import tomllib

    spec = tomllib.loads(toml)["images"]["INPUT0"]
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    image.load()
    mode = {"rgb": "RGB", "bgr": "RGB", "grayscale": "L"}[spec["color"]]
    if image.mode == "RGBA":
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, image)
    image = image.convert(mode)
    height, width = spec["size"]
    w, h = image.size
    bilinear = Image.Resampling.BILINEAR
    if spec["resize"] == "stretch":
        image = image.resize((width, height), bilinear)
    elif spec["resize"] == "pad":
        f = min(width / w, height / h)
        inner = image.resize((max(1, round(w * f)), max(1, round(h * f))), bilinear)
        canvas = Image.new(mode, (width, height), 0)
        canvas.paste(inner, ((width - inner.size[0]) // 2, (height - inner.size[1]) // 2))
        image = canvas
    else:
        f = max(width / w, height / h)
        big = image.resize((max(1, round(w * f)), max(1, round(h * f))), bilinear)
        x, y = (big.size[0] - width) // 2, (big.size[1] - height) // 2
        image = big.crop((x, y, x + width, y + height))
    values = np.asarray(image, dtype=np.float64)
    if values.ndim == 2:
        values = values[:, :, None]
    if spec["color"] == "bgr":
        values = values[:, :, ::-1]
    values = (values * spec.get("scale", 1.0) - np.array(spec.get("mean", [0.0]))) / np.array(
        spec.get("std", [1.0])
    )
    if spec.get("layout", "NCHW") == "NCHW":
        values = values.transpose(2, 0, 1)
    return values.astype(np.float32)


FILES = {
    "jpeg": encoded(picture(37, 23), "JPEG", quality=90),
    "png": encoded(picture(8, 6, seed=1), "PNG"),
    "webp": encoded(picture(50, 31, seed=2), "WEBP", lossless=True),
    "gray-png": encoded(picture(13, 29, "L", seed=3), "PNG"),
    "rgba-png": encoded(picture(17, 11, "RGBA", seed=4), "PNG"),
    "tall-jpeg": encoded(picture(9, 40, seed=5), "JPEG"),
    # At least decoding.LARGE bytes: decoded in the decoding processes, not the threads.
    "large-rgba-png": encoded(picture(140, 140, "RGBA", seed=6), "PNG"),
    "large-jpeg": encoded(picture(160, 120, seed=7), "JPEG", quality=100, subsampling=0),
}
LARGE_FILES = [FILES["large-rgba-png"], FILES["large-jpeg"]]
assert all(len(f) >= decoding.LARGE for f in LARGE_FILES)
TOMLS = {"stretch": STRETCH, "pad": PAD, "crop": CROP}


def _triton(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"))


@pytest.mark.parametrize("model", ["stretch", "pad", "crop"])
@pytest.mark.parametrize("kind", list(FILES))
def test_tritonclient_sends_files_as_binary_bytes_and_the_model_gets_the_reference(
    server: str, model: str, kind: str
) -> None:
    data = FILES[kind]
    shape = [1]
    image = triton.InferInput("INPUT0", shape, "BYTES")
    image.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=True)
    result = _triton(server).infer(model, [image])
    got = result.as_numpy("OUTPUT0")
    want = reference(data, TOMLS[model])
    assert got.shape == (1, *want.shape)
    np.testing.assert_allclose(got[0], want, atol=1e-5, rtol=0)


def test_a_batch_of_files_is_one_request_through_the_batcher(server: str) -> None:
    files = [FILES["jpeg"], FILES["png"], FILES["webp"]]
    image = triton.InferInput("INPUT0", [3], "BYTES")
    image.set_data_from_numpy(np.array(files, dtype=np.object_))
    got = _triton(server).infer("stretch", [image]).as_numpy("OUTPUT0")
    for i, data in enumerate(files):
        np.testing.assert_allclose(got[i], reference(data, STRETCH), atol=1e-5, rtol=0)
    metadata = _triton(server).get_model_metadata("stretch")
    assert metadata["inputs"] == [{"name": "INPUT0", "datatype": "BYTES", "shape": [-1]}]
    config = _triton(server).get_model_config("stretch")
    assert config["input"][0]["format"] == "FORMAT_NCHW"
    assert config["input"][0]["image"]["size"] == [6, 8]


def test_large_and_small_files_in_one_batch_come_back_in_order(server: str) -> None:
    # Threads and processes decode the parts of one batch; each tensor keeps its place.
    files = [FILES["png"], LARGE_FILES[0], FILES["jpeg"], LARGE_FILES[1], FILES["webp"]]
    image = triton.InferInput("INPUT0", [len(files)], "BYTES")
    image.set_data_from_numpy(np.array(files, dtype=np.object_))
    got = _triton(server).infer("stretch", [image]).as_numpy("OUTPUT0")
    assert got.shape == (len(files), 3, 6, 8)
    for i, data in enumerate(files):
        np.testing.assert_allclose(got[i], reference(data, STRETCH), atol=1e-5, rtol=0)


def test_a_decoding_process_that_dies_is_replaced_and_the_request_answered(
    server_process: tuple[str, subprocess.Popen[str]],
) -> None:
    url, proc = server_process
    image = triton.InferInput("INPUT0", [1], "BYTES")
    image.set_data_from_numpy(np.array([LARGE_FILES[1]], dtype=np.object_))
    want = reference(LARGE_FILES[1], STRETCH)
    np.testing.assert_allclose(_triton(url).infer("stretch", [image]).as_numpy("OUTPUT0")[0],
                               want, atol=1e-5, rtol=0)  # fmt: skip
    before = _decoding_processes(proc.pid)
    assert before, "the server has no decoding process"
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    got = _triton(url).infer("stretch", [image]).as_numpy("OUTPUT0")
    np.testing.assert_allclose(got[0], want, atol=1e-5, rtol=0)
    after = _decoding_processes(proc.pid)
    assert after and not set(after) & set(before)


def _decoding_processes(server: int) -> list[int]:
    """The server's child processes that run the decoding (multiprocessing's spawn)."""
    found = []
    for task in Path(f"/proc/{server}/task").iterdir():
        for child in (task / "children").read_text().split():
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"multiprocessing" in command and b"spawn_main" in command:
                found.append(int(child))
    return found


def test_json_base64_multipart_and_raw_bodies_give_the_same_tensor(server: str) -> None:
    data = FILES["jpeg"]
    want = reference(data, STRETCH)
    body = {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1],
                        "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(data).decode()]}]}  # fmt: skip
    with httpx.Client(base_url=server, timeout=30) as client:
        answers = [
            client.post("/v2/models/stretch/infer", json=body),
            client.post("/v2/models/stretch/infer", files={"INPUT0": ("a.jpg", data, "image/jpeg")}),
            client.post("/v2/models/stretch/infer", content=data,
                        headers={"Content-Type": "image/jpeg"}),
        ]  # fmt: skip
        for answer in answers:
            assert answer.status_code == 200, answer.text
            output = answer.json()["outputs"][0]
            got = np.array(output["data"], dtype=np.float32).reshape(output["shape"])
            np.testing.assert_allclose(got[0], want, atol=1e-5, rtol=0)
        # Several files under one field are a batch.
        two = client.post(
            "/v2/models/stretch/infer",
            files=[("INPUT0", ("a.jpg", data, "image/jpeg")),
                   ("INPUT0", ("b.png", FILES["png"], "image/png"))],
        )  # fmt: skip
        assert two.status_code == 200 and two.json()["outputs"][0]["shape"] == [2, 3, 6, 8]


BAD = {
    "not an image": (b"hello, not a picture", "element 0: not an image file"),
    "unsupported format": (encoded(picture(8, 8), "PPM"), "element 0: PPM images are not accepted"),
    "truncated": (FILES["jpeg"][: len(FILES["jpeg"]) // 2], "element 0: the JPEG file cannot be"),
    "too many pixels": (encoded(picture(200, 200), "PNG"), "more than max_image_pixels (20,000)"),
    "empty": (b"", "element 0: an empty file is not an image"),
    "truncated large": (LARGE_FILES[1][: len(LARGE_FILES[1]) * 9 // 10],
                        "element 0: the JPEG file cannot be"),
}  # fmt: skip


@pytest.mark.parametrize("bad", list(BAD))
def test_a_bad_file_is_a_400_naming_the_input_and_the_element(server: str, bad: str) -> None:
    data, message = BAD[bad]
    with httpx.Client(base_url=server, timeout=30) as client:
        answer = client.post(
            "/v2/models/stretch/infer",
            files=[("INPUT0", ("ok.png", FILES["png"], "image/png")), ("INPUT0", ("x", data))],
        )
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert "input 'INPUT0' element 1" in error, error
        assert message.split("element 0: ")[-1] in error, error
        image = triton.InferInput("INPUT0", [1], "BYTES")
        image.set_data_from_numpy(np.array([data], dtype=np.object_))
        with pytest.raises(triton.InferenceServerException, match="input 'INPUT0' element 0"):
            _triton(server).infer("stretch", [image])


def test_batches_bodies_and_urls_that_do_not_fit_are_refused(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        nine = [("INPUT0", (f"{i}.png", FILES["png"], "image/png")) for i in range(9)]
        answer = client.post("/v2/models/stretch/infer", files=nine)
        assert answer.status_code == 400 and "1 to 8 (max_batch_size)" in answer.json()["error"]
        huge = client.post("/v2/models/stretch/infer", content=bytes(MAX_BYTES + 1),
                           headers={"Content-Type": "image/png"})  # fmt: skip
        assert huge.status_code == 413
        raw = client.post("/v2/models/scores/infer", content=FILES["png"],
                          headers={"Content-Type": "image/png"})  # fmt: skip
        assert raw.status_code == 400 and "a raw image body needs" in raw.json()["error"]
        odd = client.post("/v2/models/stretch/infer?colour=1", content=FILES["png"],
                          headers={"Content-Type": "image/png"})  # fmt: skip
        assert odd.status_code == 400 and "colour" in odd.json()["error"]
        base = {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1],
                            "parameters": {"content_type": "base64"}, "data": ["%%%"]}]}  # fmt: skip
        answer = client.post("/v2/models/stretch/infer", json=base)
        assert answer.status_code == 400 and "element 0: not base64" in answer.json()["error"]


def test_classification_answers_the_top_classes_with_their_labels(server: str) -> None:
    scores = np.array([[0.1, 0.7, 0.05, 0.1, 0.05], [0.3, 0.1, 0.1, 0.1, 0.4]], np.float32)
    tensor = triton.InferInput("INPUT0", [2, 5], "FP32")
    tensor.set_data_from_numpy(scores)
    wanted = triton.InferRequestedOutput("OUTPUT0", binary_data=True, class_count=2)
    got = _triton(server).infer("scores", [tensor], outputs=[wanted]).as_numpy("OUTPUT0")
    assert got.shape == (2, 2)
    assert [[c.decode() for c in row] for row in got] == [
        ["0.700000:1:bee", "0.100000:0:ant"],
        ["0.400000:4:eel", "0.300000:0:ant"],
    ]
    assert "classification" in _triton(server).get_server_metadata()["extensions"]
    assert (
        _triton(server).get_model_config("scores")["output"][0]["label_filename"] == "classes.txt"
    )
    with httpx.Client(base_url=server, timeout=30) as client:
        body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 5],
                            "data": scores[0].tolist()}],
                "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 9}}]}  # fmt: skip
        answer = client.post("/v2/models/scores/infer", json=body)
        assert answer.status_code == 400 and "more classes than its 5" in answer.json()["error"]
        body["outputs"] = [{"name": "OUTPUT0", "parameters": {"classification": 1}}]
        one = client.post("/v2/models/scores/infer", json=body).json()["outputs"][0]
        assert one == {"name": "OUTPUT0", "datatype": "BYTES", "shape": [1, 1],
                       "data": ["0.700000:1:bee"]}  # fmt: skip


@pytest.mark.parametrize("model", list(BROKEN))
def test_a_declaration_that_does_not_fit_the_model_file_is_a_load_error_naming_the_key(
    server: str, model: str
) -> None:
    index = httpx.post(f"{server}/v2/repository/index").json()
    entry = next(e for e in index if e["name"] == model)
    assert entry["state"] == "UNAVAILABLE"
    assert REASONS[model] in entry["reason"], entry["reason"]


def test_the_openapi_example_for_an_image_input_is_an_image_the_model_takes(server: str) -> None:
    document = httpx.get(f"{server}/openapi.json").json()
    body = document["paths"]["/v2/models/stretch/infer"]["post"]["requestBody"]
    example = body["content"]["application/json"]["schema"]["example"]
    assert example["inputs"][0]["parameters"] == {"content_type": "base64"}
    answer = httpx.post(f"{server}/v2/models/stretch/infer", json=example)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["shape"] == [1, 3, 6, 8]
