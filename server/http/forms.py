"""Image files on the infer URL without the v2 JSON: ``multipart/form-data`` (one field per
input, named after it; several files in one field are a batch) and a raw body with an
``image/*`` content type (for a model with one image input). docs/images.md.

    curl -F image=@cat.jpg http://localhost:8000/v2/models/mnist/infer
    curl --data-binary @cat.jpg -H "Content-Type: image/jpeg" .../infer?classification=3

Each file (or text field) becomes one element of a BYTES tensor for the input the field
names; the request then goes through the DataPlane like any other. ``classification=N`` (a
query parameter, or a form field) asks for the top N classes of every output with labels
(of every output, where the model declares none), as the classification extension answers.
The answer is the v2 JSON response.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import numpy as np
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..classification import requested
from ..errors import InvalidRequest, show
from ..inference import InferInput, InferRequest, RequestedOutput
from ..models import ModelVersion

MAX_PARTS = 1024
"""Form fields one request may hold (each file is one)."""
CLASSIFICATION = "classification"


def is_form(content_type: bytes) -> bool:
    """Whether an infer body is a form or a raw image rather than the v2 protocol's own."""
    return content_type.startswith((b"multipart/form-data", b"image/"))


def decode(body: bytes, content_type: str, query: bytes, version: ModelVersion) -> InferRequest:
    """The form or raw image body as an InferRequest for `version`."""
    options = {k: v[-1] for k, v in parse_qs(query.decode("latin-1")).items()}
    unknown = set(options) - {CLASSIFICATION}
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter(s) {', '.join(sorted(unknown))} (this URL takes "
            "classification=N)"
        )
    if content_type.startswith("image/"):
        fields = {_the_image_input(version): [body]}
    else:
        fields = _parts(body, content_type)
        for value in fields.pop(CLASSIFICATION, []):
            options[CLASSIFICATION] = value.decode("latin-1")
    if not fields:
        raise InvalidRequest("the form has no field named after an input of the model")
    inputs = []
    for name, values in fields.items():
        array = np.empty(len(values), dtype=object)
        array[:] = values
        inputs.append(InferInput(name, "BYTES", array))
    outputs = None
    if CLASSIFICATION in options:
        count = _count(options[CLASSIFICATION])
        labelled = [t.name for t in version.config.outputs or () if t.name in version.labels]
        names = labelled or [t.name for t in version.config.outputs or ()]
        outputs = [RequestedOutput(name, False, count) for name in names]
    return InferRequest(inputs, outputs)


def _the_image_input(version: ModelVersion) -> str:
    images = list(version.images.inputs) if version.images is not None else []
    if len(images) != 1 or len(version.config.inputs or ()) != 1:
        raise InvalidRequest(
            f"a raw image body needs a model with one input, an image input; model "
            f"'{version.name}' has {len(version.config.inputs or ())} input(s), "
            f"{len(images)} of them image inputs: send multipart/form-data, one field per "
            "input"
        )
    return images[0]


def _count(text: str) -> int:
    if not (text.isdigit() and text.isascii()):
        raise InvalidRequest(f"classification={show(text)} is not a whole number of classes")
    return requested({CLASSIFICATION: int(text)}, "(every labelled output)")


def _parts(body: bytes, content_type: str) -> dict[str, list[bytes]]:
    """Field name -> the values sent under it, in order (files' bytes, text as UTF-8)."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequest("multipart/form-data without a boundary in Content-Type")
    fields: dict[str, list[bytes]] = {}
    headers: dict[bytes, bytes] = {}
    field: list[bytes] = []
    value: list[bytes] = []
    data: list[bytes] = []

    def begin() -> None:
        headers.clear()
        data.clear()

    def header_field(chunk: bytes, start: int, end: int) -> None:
        field.append(chunk[start:end])

    def header_value(chunk: bytes, start: int, end: int) -> None:
        value.append(chunk[start:end])

    def header_end() -> None:
        headers[b"".join(field).lower()] = b"".join(value)
        field.clear()
        value.clear()

    def part_data(chunk: bytes, start: int, end: int) -> None:
        data.append(chunk[start:end])

    def end() -> None:
        disposition, options = parse_options_header(headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if disposition != b"form-data" or not name:
            raise InvalidRequest("a form part has no Content-Disposition: form-data; name=...")
        values = fields.setdefault(name.decode("utf-8", "replace"), [])
        values.append(b"".join(data))
        if sum(len(v) for v in fields.values()) > MAX_PARTS:
            raise InvalidRequest(f"the form has more than {MAX_PARTS} parts")

    callbacks = {
        "on_part_begin": begin,
        "on_header_field": header_field,
        "on_header_value": header_value,
        "on_header_end": header_end,
        "on_part_data": part_data,
        "on_part_end": end,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidRequest(f"the multipart/form-data body cannot be read: {exc}") from None
    return fields
