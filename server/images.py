"""Image inputs: files sent as BYTES, decoded and preprocessed into the model's tensor.

A model.toml declares it per input (``[images.<input>]``, model_config.ImageInput; the keys
are in docs/images.md). Clients send the encoded files, one per element of a BYTES tensor;
the version's metadata shows the input that way (BYTES, one element per image), while the
engine gets the tensor the declaration describes:

    decode (Pillow, EXIF orientation applied, the first frame) -> colour mode
    -> resize (stretch | pad | crop, bilinear) -> values (pixel * scale - mean[c]) / std[c]
    -> layout (NCHW | NHWC) -> datatype

Decoding runs off the event loop, on the cores beside its core (decoding.py: threads for
small files, processes for large ones), so a burst of photographs does not take the core
requests are answered on; the decoded tensors then join the dynamic batcher like any
request's. The colour values come from one table lookup per image (ImageTensor.table). A
file that is not an image, in a format not accepted, truncated, or with more pixels than
`max_pixels` (a decompression bomb) is refused with a 400 naming the input and the element.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .datatypes import NUMPY
from .decoding import LARGE, decoding_processes, decoding_threads
from .errors import InvalidRequest, ModelLoadError
from .model_config import ImageInput, ModelConfig, TensorSpec

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
"""What an image input takes; anything else Pillow knows (EPS, PDF, ...) is refused."""
DEFAULT_MAX_PIXELS = 40_000_000
"""Pixels one decoded image may have: above it, a 400 before the pixels are decoded."""

# Pillow's own limit warns at 89 M pixels and refuses at twice that; `max_pixels` is checked
# instead, from the header, before anything is decoded.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageTensor:
    """One image input: its declaration and the model tensor it becomes."""

    name: str
    spec: ImageInput
    tensor: TensorSpec
    """The model's input as the engine takes it (without the batch dim when batching)."""
    batched: bool

    def served(self) -> TensorSpec:
        """The input as clients send it: BYTES, one element per image."""
        shape = () if self.batched else (self.tensor.shape[0],)
        return TensorSpec(name=self.name, datatype="BYTES", shape=shape)

    @cached_property
    def table(self) -> np.ndarray:
        """[channel, pixel]: each 8-bit pixel value as the tensor's value for that channel,
        (pixel * scale - mean[c]) / std[c] in float32 and then the datatype, so a decoded
        image becomes its tensor in one lookup (the same IEEE operations, the same bits)."""
        spec = self.spec
        pixels = np.arange(256, dtype=np.float32)[None, :]
        mean = np.asarray(spec.mean, dtype=np.float32)[:, None]
        std = np.asarray(spec.std, dtype=np.float32)[:, None]
        values = (pixels * np.float32(spec.scale) - mean) / std
        values = np.broadcast_to(values, (spec.channels, 256))
        return _as(values, NUMPY[spec.datatype])


class Images:
    """A version's image inputs: checked against the model file at load, then used to turn
    each request's files into tensors."""

    def __init__(self, inputs: Mapping[str, ImageTensor], max_pixels: int) -> None:
        self.inputs = dict(inputs)
        self.max_pixels = max_pixels

    @classmethod
    def resolve(cls, config: ModelConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> Images | None:
        """Blocking-free: the image inputs of a version whose schema is resolved (`config` is
        the effective one); a declaration that does not fit the model file is a load error
        naming the key."""
        if not config.images:
            return None
        batched = config.max_batch_size > 0
        tensors = {t.name: t for t in config.inputs or ()}
        found = {}
        for name, spec in config.images.items():
            tensor = tensors.get(name)
            if tensor is None:
                raise ModelLoadError(
                    f"images.{name}: the model has no input {name!r} "
                    f"(it takes: {', '.join(tensors)})"
                )
            if tensor.datatype != spec.datatype:
                raise ModelLoadError(
                    f"images.{name}.datatype: {spec.datatype}, but the model's input {name!r} "
                    f"is {tensor.datatype}"
                )
            want = spec.tensor_shape()
            shape = tensor.shape if batched else tensor.shape[1:]
            if not batched and (len(tensor.shape) != len(want) + 1):
                raise ModelLoadError(
                    f"images.{name}: with max_batch_size = 0 the model's input {name!r} "
                    f"{list(tensor.shape)} needs a leading dimension for the images, then "
                    f"{list(want)}"
                )
            if len(shape) != len(want) or any(s not in (-1, w) for s, w in zip(shape, want)):
                raise ModelLoadError(
                    f"images.{name}: size {list(spec.size)}, {spec.color}, {spec.layout} makes "
                    f"{list(want)} per image, but the model's input {name!r} is "
                    f"{list(shape)} ({_which(spec, shape)})"
                )
            exact = tensor.model_copy(
                update={"shape": (*tensor.shape[: len(tensor.shape) - len(want)], *want)}
            )
            found[name] = ImageTensor(name, spec, exact, batched)
        return cls(found, max_pixels)

    def served(self, inputs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
        """The version's inputs as clients send them: image inputs as BYTES."""
        return tuple(self.inputs[t.name].served() if t.name in self.inputs else t for t in inputs)

    async def tensors(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The request's arrays with each image input's files turned into its tensor."""
        out = dict(arrays)
        for name, image in self.inputs.items():
            files = arrays[name].reshape(-1)
            stacked = np.stack(await self._decoded(image, files))
            out[name] = (
                stacked if image.batched else stacked.reshape((len(files), *image.tensor.shape[1:]))
            )
        return out

    async def _decoded(self, image: ImageTensor, files: np.ndarray) -> list[np.ndarray]:
        """Each file's tensor: small files in the decoding threads, large ones in the decoding
        processes; one hand-off per thread or process, a batch split among them."""
        loop = asyncio.get_running_loop()
        large = [i for i, f in enumerate(files) if isinstance(f, bytes) and len(f) >= LARGE]
        if large:
            sent = set(large)
            small: Sequence[int] = [i for i in range(len(files)) if i not in sent]
        else:
            small = range(len(files))
        threads, width = decoding_threads()
        parts = [small[i::width] for i in range(min(width, len(small)))]
        pending: list[Awaitable[list[np.ndarray]]] = [
            loop.run_in_executor(
                threads, decode_files, image, self.max_pixels, [(i, files[i]) for i in p]
            )
            for p in parts
        ]
        if large:
            processes = decoding_processes()
            split = [large[i :: processes.width] for i in range(min(processes.width, len(large)))]
            pending += [
                processes.run(
                    decode_files, image, self.max_pixels, [(i, files[i]) for i in p],
                    files=f"input '{image.name}' element(s) {', '.join(map(str, p))}",
                )
                for p in split
            ]  # fmt: skip
            parts += split
        done = await asyncio.gather(*pending)
        decoded: list[np.ndarray] = [np.empty(0)] * len(files)
        for part, tensors in zip(parts, done, strict=True):
            for i, tensor in zip(part, tensors, strict=True):
                decoded[i] = tensor
        return decoded

    def decode(self, image: ImageTensor, index: int, data: object) -> np.ndarray:
        """Blocking: element `index` of input `image` as its tensor for one image."""
        where = f"input '{image.name}' element {index}"
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidRequest(f"{where}: an image file is bytes, got {type(data).__name__}")
        picture = open_image(bytes(data), where, self.max_pixels)
        return preprocess(picture, image.spec, image.table)


def decode_files(
    image: ImageTensor, max_pixels: int, items: list[tuple[int, bytes]]
) -> list[np.ndarray]:
    """In a decoding thread or process (decoding.py): each (index, file) as its tensor."""
    images = Images({image.name: image}, max_pixels)
    return [images.decode(image, i, data) for i, data in items]


def open_image(data: bytes, where: str, max_pixels: int) -> Image.Image:
    """Blocking: `data` decoded (EXIF orientation applied, the first frame), or a 400 that
    says what was wrong with it."""
    if not data:
        raise InvalidRequest(f"{where}: an empty file is not an image")
    formats = _sniffed(data)
    try:
        picture = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        if len(formats) == 1:
            raise InvalidRequest(
                f"{where}: the file starts like a {formats[0]} file, but its header cannot be "
                "read: is it damaged or truncated?"
            ) from None
        raise InvalidRequest(f"{where}: {_not_accepted(data)}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidRequest(f"{where}: the {_kind(data)} file cannot be read: {exc}") from None
    width, height = picture.size
    if width * height > max_pixels:
        raise InvalidRequest(
            f"{where}: {width}x{height} is {width * height:,} pixels, more than "
            f"max_image_pixels ({max_pixels:,}): refused before decoding"
        )
    # The whole file in one call to the decoder, which lets go of the GIL while it works,
    # instead of a Python loop feeding it 64 KiB at a time.
    picture.decodermaxblock = max(len(data), ImageFile.MAXBLOCK)
    try:
        picture.load()
        if "exif" in picture.info:  # a camera's orientation (PNGs rarely carry one)
            return ImageOps.exif_transpose(picture) or picture
        return picture
    except (OSError, ValueError, SyntaxError) as exc:
        reason = str(exc) or type(exc).__name__
        raise InvalidRequest(
            f"{where}: the {picture.format or 'image'} file cannot be decoded ({reason}): is "
            "it truncated?"
        ) from None


def preprocess(picture: Image.Image, spec: ImageInput, table: np.ndarray) -> np.ndarray:
    """Blocking: a decoded image as the tensor `spec` declares, for one image; `table` is
    its ImageTensor.table."""
    mode = "L" if spec.color == "grayscale" else "RGB"
    if picture.mode != mode:
        if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
            # Transparent pixels become black, whatever colour they hide.
            background = Image.new("RGBA", picture.size, (0, 0, 0, 255))
            picture = Image.alpha_composite(background, picture.convert("RGBA"))
        picture = picture.convert(mode)
    height, width = spec.size
    if picture.size != (width, height) or spec.resize != "stretch":
        picture = resized(picture, spec.resize, width, height)
    pixels = np.asarray(picture)  # uint8: [h, w] or [h, w, 3]
    out: np.ndarray
    if pixels.ndim == 2:
        out = table[0][pixels[None] if spec.layout == "NCHW" else pixels[:, :, None]]
    else:
        if spec.color == "bgr":
            pixels = pixels[:, :, ::-1]
        if spec.layout == "NCHW":
            out = table[_CHANNELS_FIRST, pixels.transpose(2, 0, 1)]
        else:
            out = table[_CHANNELS_LAST, pixels]
    return out


_CHANNELS_FIRST = np.arange(3)[:, None, None]
_CHANNELS_LAST = np.arange(3)[None, None, :]


def _as(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 values in `dtype`: integers rounded and clipped to its range."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return np.ascontiguousarray(values, dtype=dtype)


def resized(picture: Image.Image, method: str, width: int, height: int) -> Image.Image:
    """stretch: to width x height; pad: the largest fit keeping the aspect, centred on black;
    crop: the shorter side to fit, then the centre cut out. Bilinear throughout."""
    if method == "stretch":
        return picture.resize((width, height), Image.Resampling.BILINEAR)
    w, h = picture.size
    fit = min(width / w, height / h) if method == "pad" else max(width / w, height / h)
    size = (max(1, round(w * fit)), max(1, round(h * fit)))
    scaled = picture.resize(size, Image.Resampling.BILINEAR)
    if method == "pad":
        canvas = Image.new(picture.mode, (width, height))
        canvas.paste(scaled, ((width - size[0]) // 2, (height - size[1]) // 2))
        return canvas
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def example_image(spec: ImageInput) -> bytes:
    """A PNG of the declared size, mid-grey: an example request that the model takes."""
    height, width = spec.size
    out = io.BytesIO()
    Image.new("L" if spec.color == "grayscale" else "RGB", (width, height), 128).save(out, "PNG")
    return out.getvalue()


def _not_accepted(data: bytes) -> str:
    """Why Pillow would not open `data` as one of `FORMATS`: another format, or none."""
    try:
        other = Image.open(io.BytesIO(data)).format  # the header only: nothing is decoded
    except Exception:
        other = None
    if other:
        return f"{other} images are not accepted (send {', '.join(FORMATS)})"
    return f"not an image file ({', '.join(FORMATS)} are accepted)"


_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _sniffed(data: bytes) -> tuple[str, ...]:
    """The one format `data` starts like (Pillow then tries only that plugin), or all."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return (name,)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ("WEBP",)
    return FORMATS


def _kind(data: bytes) -> str:
    return {b"\xff\xd8": "JPEG", b"\x89P": "PNG", b"RI": "WebP"}.get(data[:2], "image")


def _which(spec: ImageInput, shape: tuple[int, ...]) -> str:
    """Which key to change so the declaration fits the model's input."""
    channels_at = 0 if spec.layout == "NCHW" else len(shape) - 1
    if len(shape) == 3 and shape[channels_at] not in (-1, spec.channels):
        return f"change color or layout: {spec.color} has {spec.channels} channel(s)"
    return "change size, layout or color to match"
