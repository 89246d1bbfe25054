"""KServe v2 JSON bodies as pydantic models: the OpenAPI document is generated from these.

The infer hot path does not validate through pydantic (protocol.py decodes with orjson and
numpy, and checks against each model's own schema); these models describe the same shapes for
documentation, and validate the small bodies of the repository endpoints.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .datatypes import Datatype


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorResponse(Wire):
    error: str = Field(description="What was wrong, naming the tensor, key or model.")


class ServerMetadata(Wire):
    name: str
    version: str
    extensions: list[str]


class MetadataTensor(Wire):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 = any size; with batching the first dim is -1.")


class ModelMetadata(Wire):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    state: Literal["READY", "UNAVAILABLE", "LOADING", "UNLOADING", "UNKNOWN"]
    reason: str | None = None


class RequestInput(Wire):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size: N when the tensor's bytes follow the JSON header."
    )
    data: list[Any] | None = Field(None, description="Row-major values, flat or nested.")


class RequestOutput(Wire):
    name: str
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data: true to get this output as raw bytes."
    )


class InferenceRequest(Wire):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_output: true for binary outputs when none are listed."
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(Wire):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(Wire):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class RepositoryIndexRequest(Wire):
    ready: bool = False


class RepositoryIndexEntry(Wire):
    name: str
    version: str | None = None
    state: str
    reason: str


class RepositoryLoadRequest(Wire):
    parameters: dict[str, Any] | None = None
