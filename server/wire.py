"""The API's shapes, declared once: what the DataPlane answers and what OpenAPI documents.

Answers (metadata, Triton's model configuration, statistics, the repository index) are
TypedDicts: the DataPlane builds them as plain dicts at no cost, mypy checks them, and the
OpenAPI document takes their JSON schema from pydantic's TypeAdapter. Request bodies are
pydantic models with ``extra="forbid"``; the infer hot path does not validate through pydantic
(http/codec.py decodes with orjson and numpy, and the DataPlane checks against each model's
own schema), so `InferenceRequest` and `InferenceResponse` only document the REST JSON form.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict  # pydantic reads typing's only from Python 3.12

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
    model_name: str | None = Field(
        None, description="The KServe SDK names the model here: it must be the path's model."
    )
    model_version: str | None = Field(
        None, description="When given, the version that serves the request."
    )
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


class SharedMemoryRegister(Wire):
    """Triton's system shared-memory registration: `byte_size` bytes at `offset` of the
    POSIX shared-memory segment `key` (shm_open's name, e.g. ``/input0``)."""

    key: str
    offset: int = 0
    byte_size: int


class CUDASharedMemoryRegister(Wire):
    raw_handle: dict[str, Any] | None = None
    device_id: int = 0
    byte_size: int = 0


# -- answers ---------------------------------------------------------------------------------


class Live(TypedDict):
    live: bool


class Ready(TypedDict):
    ready: bool


class ModelReady(TypedDict):
    name: str
    ready: bool


class ServerMetadataAnswer(TypedDict):
    name: str
    version: str
    extensions: list[str]


class Tensor(TypedDict):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadataAnswer(TypedDict):
    name: str
    versions: list[str]
    platform: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    state: str
    reason: NotRequired[str]


class ConfigInput(TypedDict):
    name: str
    data_type: str
    format: str
    dims: list[int]
    is_shape_tensor: bool
    allow_ragged_batch: bool
    optional: bool
    image: NotRequired[dict[str, Any]]
    """An image input's preprocessing (model.toml's [images.<input>]): Cinfer's, not Triton's."""


class ConfigOutput(TypedDict):
    name: str
    data_type: str
    dims: list[int]
    label_filename: str
    is_shape_tensor: bool


class InstanceGroup(TypedDict):
    name: str
    kind: str
    count: int
    gpus: list[int]


class QueuePolicy(TypedDict):
    timeout_action: str
    default_timeout_microseconds: int
    allow_timeout_override: bool
    max_queue_size: int


class DynamicBatching(TypedDict):
    preferred_batch_size: list[int]
    max_queue_delay_microseconds: int
    preserve_ordering: bool
    default_queue_policy: QueuePolicy


class ModelConfigAnswer(TypedDict):
    """Triton's ModelConfig as JSON (perf_analyzer and tritonclient read it)."""

    name: str
    platform: str
    backend: str
    version_policy: dict[str, Any]
    max_batch_size: int
    input: list[ConfigInput]
    output: list[ConfigOutput]
    instance_group: list[InstanceGroup]
    default_model_filename: str
    parameters: dict[str, dict[str, str]]
    model_transaction_policy: dict[str, bool]
    response_cache: dict[str, bool]
    description: NotRequired[str]
    dynamic_batching: NotRequired[DynamicBatching]


class Duration(TypedDict):
    count: int
    ns: int


class InferenceStatistics(TypedDict):
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    cache_hit: Duration
    cache_miss: Duration


class BatchStatistics(TypedDict):
    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class ModelStatistics(TypedDict):
    """One entry of Triton's statistics extension."""

    name: str
    version: str
    last_inference: int
    inference_count: int
    execution_count: int
    inference_stats: InferenceStatistics
    batch_stats: list[BatchStatistics]


class StatisticsAnswer(TypedDict):
    model_stats: list[ModelStatistics]


class IndexEntry(TypedDict):
    name: str
    version: NotRequired[str]
    state: str
    reason: str


# -- async jobs (issue 15, docs/jobs.md) -----------------------------------------------------

JobState = Literal["queued", "running", "succeeded", "failed", "canceled"]
CallbackStatus = Literal["pending", "delivered", "failed"]


class JobLinks(TypedDict):
    self: str
    result: str
    """The v2 infer response, once the job has succeeded."""
    events: str
    """Server-sent events: the job's every state change."""


class JobCallback(TypedDict):
    url: str
    status: CallbackStatus
    attempts: int
    """Deliveries tried so far."""
    error: str | None
    """Why the last delivery failed."""


class JobAnswer(TypedDict):
    id: str
    model: str
    version: str | None
    """The version the job was submitted to; None: the model's newest ready one."""
    model_version: str | None
    """The version that ran it, once it has run."""
    state: JobState
    attempts: int
    """Times the job has started: more than 1 when the server stopped under it (or the model
    was briefly unavailable) and it ran again."""
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    """Why it failed, naming what was wrong."""
    owner: str | None
    """The id of the API token that submitted it; None with authentication off."""
    callback: JobCallback | None
    links: JobLinks


class JobListAnswer(TypedDict):
    jobs: list[JobAnswer]
    next_cursor: str | None
    """Pass as ``cursor`` for the next page; None on the last one."""
