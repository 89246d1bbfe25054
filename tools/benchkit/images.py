"""Image files as the input data (`--images DIR`): the files, the input they fill, the batches.

Every image file of DIR (sorted by name, not in subfolders) is an element of the model's BYTES
input: request after request takes the next `n` files (`n` the element count of that input: `-b`
when the model batches), wrapping round, so the run sends every file equally often. The
sequence of batches repeats after `files / gcd(files, n)` requests; that many bodies are built
before the run, one per distinct batch, and the load cycles through them.

The files travel as a server with image inputs takes them (docs/bench.md): elements of a BYTES
tensor in the binary tensor extension (what tritonclient sends for an np.object_ array), base64
text in JSON with `"parameters": {"content_type": "base64"}` (MLServer's way), or
multipart/form-data, one field named after the input with one file part per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .inputs import Request, build_requests, infer_request
from .target import BenchError, Endpoint, Model, Tensor

TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".gif": "image/gif",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
"""The files --images takes, by extension (any case), with the Content-Type of their part."""
BOUNDARY = "benchkit-8c5e3a1f0d7b4e29a6f1c3d5b7e9a2c4"
"""The multipart boundary; fixed, so a body's size depends on its files only."""


@dataclass(frozen=True)
class ImageFile:
    name: str
    data: bytes

    @property
    def content_type(self) -> str:
        return TYPES[Path(self.name).suffix.lower()]


def read_folder(folder: Path) -> list[ImageFile]:
    """The image files of `folder`, sorted by name; BenchError when there are none."""
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise BenchError(f"--images {folder}: {what}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in TYPES and p.is_file())
    if not paths:
        raise BenchError(
            f"--images {folder}: no image files in it (looked for "
            f"{', '.join(sorted({s.lstrip('.') for s in TYPES}))}, not in subfolders)"
        )
    try:
        return [ImageFile(p.name, p.read_bytes()) for p in paths]
    except OSError as exc:
        raise BenchError(f"--images {folder}: {exc}") from None


def image_input(model: Model, name: str | None) -> Tensor:
    """The input the files fill: `name` (--image-input), else the model's one BYTES input."""
    listed = ", ".join(f"{t.name} {t.datatype}" for t in model.inputs)
    if name is not None:
        found = [t for t in model.inputs if t.name == name]
        if not found:
            raise BenchError(
                f"--image-input {name}: model '{model.name}' has no such input (its inputs: "
                f"{listed})"
            )
        if found[0].datatype != "BYTES":
            raise BenchError(
                f"--image-input {name}: the input is {found[0].datatype}; image files travel "
                "in a BYTES input (declared in model.toml as [images.<input>])"
            )
        return found[0]
    candidates = [t for t in model.inputs if t.datatype == "BYTES"]
    if not candidates:
        raise BenchError(
            f"--images: model '{model.name}' has no BYTES input to carry image files (its "
            f"inputs: {listed}); a server with image inputs shows them as BYTES (in Cinfer, "
            "[images.<input>] in model.toml)"
        )
    if len(candidates) > 1:
        raise BenchError(
            f"--images: model '{model.name}' has {len(candidates)} BYTES inputs "
            f"({', '.join(t.name for t in candidates)}); choose one with --image-input NAME"
        )
    return candidates[0]


def image_requests(
    endpoint: Endpoint,
    model: Model,
    tensor: Tensor,
    files: list[ImageFile],
    shape: tuple[int, ...],
    fmt: str,
    others: dict[str, np.ndarray],
) -> list[Request]:
    """One request per distinct batch of files, in the order the run sends them.

    `shape` is the request shape of the image input (its element count is the files per
    request); `others` holds the data of the model's other inputs; `fmt` is --format.
    """
    groups = batches(files, int(np.prod(shape)))
    labels = ["files " + ", ".join(f.name for f in group) for group in groups]
    if fmt != "multipart":
        entries = [{**others, tensor.name: as_array(group, shape)} for group in groups]
        return build_requests(endpoint, model, entries, fmt == "binary", tensor.name, labels)
    if others:
        raise BenchError(
            f"--format multipart: model '{model.name}' has inputs besides {tensor.name} "
            f"({', '.join(others)}), which a form of files cannot carry; use --format binary "
            "or json"
        )
    return [
        infer_request(
            endpoint, model, form_body(tensor.name, group), form_content_type(), None, label
        )
        for group, label in zip(groups, labels)
    ]


def batches(files: list[ImageFile], count: int) -> list[list[ImageFile]]:
    """The distinct batches of `count` files, in the order the run sends them."""
    distinct = len(files) // math.gcd(len(files), count)
    return [[files[(i * count + j) % len(files)] for j in range(count)] for i in range(distinct)]


def as_array(batch: list[ImageFile], shape: tuple[int, ...]) -> np.ndarray:
    """The files of one request as the BYTES array of the input's request shape."""
    array = np.empty(len(batch), dtype=object)
    array[:] = [f.data for f in batch]
    return array.reshape(shape)


def form_body(field: str, batch: list[ImageFile]) -> bytes:
    """multipart/form-data: one part per file, all in the field named after the input."""
    disposition = f'form-data; name="{_quoted(field)}"'
    parts = []
    for f in batch:
        if BOUNDARY.encode() in f.data:
            raise BenchError(
                f"--images: {f.name} contains bench.py's multipart boundary; send it with "
                "--format binary or json"
            )
        head = (
            f"--{BOUNDARY}\r\n"
            f'Content-Disposition: {disposition}; filename="{_quoted(f.name)}"\r\n'
            f"Content-Type: {f.content_type}\r\n\r\n"
        )
        parts += [head.encode(), f.data, b"\r\n"]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def form_content_type() -> str:
    return f"multipart/form-data; boundary={BOUNDARY}"


def _quoted(text: str) -> str:
    # The WHATWG form encoding browsers and httpx use inside a quoted header parameter.
    return text.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")
