"""server.images.Images.decode on its own: every colour, layout and datatype against values
computed here in float64 from the decoded pixels, integers rounded and clipped to the type.

(tests/live/test_images.py sends real files to a real server; this covers the datatypes and
layouts its identity models do not.)
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from server.errors import InvalidRequest
from server.images import Images, ImageTensor
from server.model_config import ImageInput, TensorSpec

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)  # [h, w, c]
PNG = io.BytesIO()
Image.fromarray(RGB, "RGB").save(PNG, "PNG")


def _decoder(**keys: object) -> tuple[Images, ImageTensor]:
    spec = ImageInput(size=(5, 6), **keys)
    shape = spec.tensor_shape()
    tensor = TensorSpec(name="image", datatype=spec.datatype, shape=shape)
    image = ImageTensor("image", spec, tensor, batched=True)
    return Images({"image": image}, max_pixels=1_000), image


def _expected(pixels: np.ndarray, spec: ImageInput) -> np.ndarray:
    values = pixels.astype(np.float64)
    if values.ndim == 2:
        values = values[:, :, None]
    if spec.color == "bgr":
        values = values[:, :, ::-1]
    values = (values * spec.scale - np.array(spec.mean)) / np.array(spec.std)
    if spec.layout == "NCHW":
        values = values.transpose(2, 0, 1)
    return values


@pytest.mark.parametrize("color", ["rgb", "bgr", "grayscale"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_float_values_follow_the_declaration(color: str, layout: str) -> None:
    channels = 1 if color == "grayscale" else 3
    mean = [0.485, 0.456, 0.406][:channels]
    std = [0.229, 0.224, 0.225][:channels]
    images, image = _decoder(color=color, layout=layout, scale=1 / 255, mean=mean, std=std)
    got = images.decode(image, 0, PNG.getvalue())
    pixels = np.asarray(Image.fromarray(RGB).convert("L")) if color == "grayscale" else RGB
    want = _expected(pixels, image.spec)
    assert got.dtype == np.float32 and got.shape == want.shape == image.spec.tensor_shape()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    if color == "bgr":  # the first channel is the file's blue
        blue = RGB[:, :, 2] / 255
        first = got[0] if layout == "NCHW" else got[:, :, 0]
        np.testing.assert_allclose(first, (blue - mean[0]) / std[0], atol=1e-5)


@pytest.mark.parametrize(("datatype", "low", "high"), [("UINT8", 0, 255), ("INT8", -128, 127)])
def test_integer_datatypes_round_and_clip(datatype: str, low: int, high: int) -> None:
    # (pixel - 100) * 2 is exact, from -200 to 310: both ends leave the type's range.
    images, image = _decoder(datatype=datatype, mean=[100.0], std=[0.5], layout="NHWC")
    got = images.decode(image, 0, PNG.getvalue())
    want = np.clip((RGB.astype(np.int64) - 100) * 2, low, high)
    assert got.dtype == np.dtype(datatype.lower())
    np.testing.assert_array_equal(got, want)
    assert got.min() == low and got.max() == high


@pytest.mark.parametrize("datatype", ["FP16", "FP64"])
def test_other_float_datatypes(datatype: str) -> None:
    images, image = _decoder(datatype=datatype, scale=1 / 255, mean=[0.5], std=[0.25])
    got = images.decode(image, 0, PNG.getvalue())
    assert got.dtype == np.dtype({"FP16": "float16", "FP64": "float64"}[datatype])
    np.testing.assert_allclose(got, _expected(RGB, image.spec), rtol=1e-3, atol=1e-3)


def test_a_file_whose_signature_lies_is_refused_by_name() -> None:
    images, image = _decoder()
    with pytest.raises(
        InvalidRequest,
        match="element 3: the file starts like a PNG file, but its header cannot be read",
    ):
        images.decode(image, 3, b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
