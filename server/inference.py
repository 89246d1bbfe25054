"""Inference requests and responses as every front door hands them to the DataPlane.

A door (the REST codec today; gRPC, multipart images, jobs later) decodes its wire format into
an `InferRequest` and encodes the `InferResponse` the DataPlane returns. Nothing here knows a
transport: the one transport hint is `binary`, which a door that has a raw-bytes form of a
tensor (the REST binary extension) may honour and others ignore.

    door bytes --decode--> InferRequest --DataPlane.infer--> InferResponse --encode--> bytes

A response is also offered as a stream (`DataPlane.stream`): one item for the models served
today, several for a model that answers in parts (generation, decoupled models), so a door
that streams (gRPC streaming, SSE) consumes both through one code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(slots=True)
class InferInput:
    """One input tensor: its name, its declared KServe datatype and the decoded array."""

    name: str
    datatype: str
    array: np.ndarray


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for."""

    name: str
    binary: bool = False
    """Transport hint: answer this tensor as raw bytes where the door has such a form."""
    classification: int = 0
    """The classification extension: answer the top N classes as strings (0: the tensor)."""
    place: OutputPlace | None = None
    """Where the output's bytes go instead of the response (a shared-memory region)."""


class OutputPlace(Protocol):
    """A place outside the response for an output's bytes (sharedmemory.Placement)."""

    @property
    def region(self) -> str:
        """The place's name, as the client gave it (a shared-memory region's)."""
        ...

    def write(self, data: bytes | memoryview) -> int:
        """Write an output's bytes there; their size. A 400 when they do not fit."""
        ...


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request, independent of the door it came through."""

    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None = None
    """The outputs asked for, in order; None: every output of the model."""
    id: str | None = None
    parameters: dict[str, Any] | None = None
    binary_output: bool = False
    """Transport hint: every output binary unless `outputs` says otherwise."""
    model_name: str | None = None
    """The model the body names (the KServe SDK sends it); checked against the target."""
    model_version: str | None = None
    signature: object | None = None
    """Set by a door that knows requests alike: two requests with the same signature have
    the same input names, datatypes and shapes, the same requested outputs and the same
    model_name/model_version, so a model version checks a signature once (the REST codec
    gives each binary header layout one)."""

    @property
    def output_names(self) -> list[str] | None:
        return [o.name for o in self.outputs] if self.outputs is not None else None


@dataclass(slots=True)
class InferResponse:
    """The outputs of one request, as the model version that served it produced them."""

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    """The computed outputs by name (every requested one, in the model's order)."""
    request: InferRequest
    """The request answered: its id, requested outputs and transport hints."""
    rows: int = 1
    """The batch size the request carried (1 for models without batching)."""
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str | None:
        return self.request.id
