"""model.toml: what a model folder declares, as pydantic models with unknown keys rejected.

engine = "onnxruntime"       # required: onnxruntime | openvino | torch | pipeline
max_batch_size = 32          # 0 = no implicit batch dimension
instances = 2
device = "cpu"               # cpu | cuda | cuda:N | auto | an OpenVINO device name (GPU, ...)
[[inputs]] / [[outputs]]     # optional for engines that can read them from the file
[batching]                   # present = dynamic batching on
[version_policy]             # latest = N | all = true | specific = [..]
[cache]                      # enabled = true: the same request answered from the cache
[parameters]                 # engine options
[[steps]]                    # engine = "pipeline" only: the models it runs (pipelines.py)
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .datatypes import Datatype

Dim = Annotated[int, Field(ge=-1)]

#: cpu, auto, cuda, cuda:N, or an OpenVINO device name as OpenVINO spells it (CPU, GPU, GPU.1,
#: NPU, AUTO:GPU,CPU, ...).
DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?|[A-Z][A-Z0-9_]*(\.\d+)?(:[A-Z0-9_.,]+)?)$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(Strict):
    """One input or output tensor. With max_batch_size > 0 the shape excludes the batch dim."""

    name: str = Field(min_length=1)
    datatype: Datatype
    shape: tuple[Dim, ...]
    """Dimensions; -1 means any size."""
    source: str | None = Field(None, alias="from")
    """A pipeline's output only: the step output it is, as "step.OUTPUT" (docs/engines.md)."""
    method: Literal["predict", "predict_proba", "decision_function", "transform"] | None = None
    """An sklearn model's output only: the estimator method that computes it (default
    predict)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _no_zero_dims(self) -> TensorSpec:
        if 0 in self.shape:
            raise ValueError(f"tensor '{self.name}': dimensions are -1 (any) or positive, got 0")
        return self


class Batching(Strict):
    """Dynamic batching: requests for one version are run together when an instance is free."""

    max_queue_delay_us: int = Field(0, ge=0)
    """How long a partial batch may wait for more requests; 0 = never wait."""
    preferred_batch_sizes: tuple[Annotated[int, Field(gt=0)], ...] = ()
    """Batch sizes worth waiting for (within max_queue_delay_us)."""
    max_queue_size: int = Field(1024, gt=0)
    """Requests waiting beyond this are refused with 503."""
    timeout_us: int = Field(0, ge=0)
    """A request still queued after this long is refused with 503; 0 = no limit."""


class VersionPolicy(Strict):
    """Which numeric version folders are served: `latest = N`, `all = true` or `specific`."""

    latest: int | None = Field(None, gt=0)
    all: bool | None = None
    specific: tuple[Annotated[int, Field(ge=0)], ...] | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> VersionPolicy:
        given = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of latest, all, specific (got {', '.join(given)})")
        if self.all is False:
            raise ValueError("all = false selects nothing; use latest = N or specific = [...]")
        if self.specific == ():
            raise ValueError("specific = [] selects nothing")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among `available`, ascending."""
        found = sorted(available)
        if self.all:
            return found
        if self.specific is not None:
            return [v for v in found if v in self.specific]
        return found[-(self.latest or 1) :]

    def as_triton(self) -> dict[str, Any]:
        if self.all:
            return {"all": {}}
        if self.specific is not None:
            return {"specific": {"versions": list(self.specific)}}
        return {"latest": {"num_versions": self.latest or 1}}


class ImageInput(Strict):
    """``[images.<input>]``: the input takes image files, decoded and preprocessed by the
    server into the model's tensor (docs/images.md). Clients send BYTES, one file per element.

    Each value is ``(pixel * scale - mean[c]) / std[c]`` per channel c, after the resize."""

    color: Literal["rgb", "bgr", "grayscale"] = "rgb"
    size: tuple[Annotated[int, Field(gt=0, le=16384)], Annotated[int, Field(gt=0, le=16384)]]
    """[height, width] of the tensor's image."""
    resize: Literal["stretch", "pad", "crop"] = "stretch"
    """stretch: to the size, aspect ignored; pad: keep the aspect, fit inside, pad with 0;
    crop: the shorter side to the size, then the centre cut out."""
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    """One value, or one per channel (3 for rgb and bgr)."""
    std: tuple[float, ...] = (1.0,)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    datatype: Literal["FP32", "FP16", "FP64", "UINT8", "INT8"] = "FP32"
    """The model tensor's datatype (UINT8 and INT8 take the values as they come, rounded)."""

    @model_validator(mode="after")
    def _channels(self) -> ImageInput:
        channels = 1 if self.color == "grayscale" else 3
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) not in (1, channels):
                raise ValueError(
                    f"{key} has {len(values)} values; {self.color} has {channels} channel(s): "
                    f"give 1 or {channels}"
                )
        if any(v == 0 for v in self.std):
            raise ValueError("std values must not be 0")
        return self

    @property
    def channels(self) -> int:
        return 1 if self.color == "grayscale" else 3

    def tensor_shape(self) -> tuple[int, ...]:
        """The model tensor's shape for one image (without the batch dim)."""
        height, width = self.size
        if self.layout == "NCHW":
            return (self.channels, height, width)
        return (height, width, self.channels)


class Cache(Strict):
    """``[cache]``: answers of this model are kept and served again to the same request
    (docs/cache.md). Where they are kept is the server's ``[cache]`` in config.toml."""

    enabled: bool = False


class Step(Strict):
    """``[[steps]]`` of a pipeline: one model it runs, and where each of its inputs comes from."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """The step's name: its outputs are "<name>.<OUTPUT>" to later steps and [[outputs]]."""
    model: str = Field(min_length=1)
    version: int | None = Field(None, ge=0)
    """A fixed version of the model; none: its highest READY version, as requests get."""
    inputs: dict[str, str]
    """The model's input -> a pipeline input's name or an earlier step's "step.OUTPUT"."""


LABELS_FILE = re.compile(r"[A-Za-z0-9_.\-]{1,255}")

ParameterValue = str | int | float | bool


class ModelConfig(Strict):
    """The contents of one model.toml."""

    engine: str = Field(min_length=1)
    """Engine name: onnxruntime, openvino or torch (the table is server.engines.ENGINES)."""
    max_batch_size: int = Field(0, ge=0)
    """0: shapes are complete; N > 0: shapes exclude a batch dim of up to N rows per request."""
    instances: int = Field(1, ge=1, le=256)
    """Engine instances running in parallel."""
    device: str = "cpu"
    """Where the model runs: "cpu", "cuda" / "cuda:N" (NVIDIA, onnxruntime and torch), "auto"
    (the first GPU the engine can use, else CPU), or an OpenVINO device name as given ("GPU").
    A device that is not there makes the version UNAVAILABLE with the reason."""
    enabled: bool = True
    """false: the model is unpublished: its folder, files and history stay, nothing of it is
    served (the console's unpublish writes this, so git shows it and restarts keep it)."""
    description: str = ""
    file: str | None = None
    """Model file inside each version folder; each engine has its default (model.onnx, ...)."""
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    batching: Batching | None = None
    version_policy: VersionPolicy = VersionPolicy()
    parameters: dict[str, ParameterValue] = {}
    images: dict[str, ImageInput] = {}
    """Input name -> how its image files become the model's tensor (docs/images.md)."""
    labels: dict[str, str] = {}
    """Output name -> a labels file in the model folder, one label per class (the
    classification extension: docs/images.md)."""
    cache: Cache = Cache()
    """The response cache: a request answered before is answered again without the engine."""
    steps: tuple[Step, ...] = ()
    """engine = "pipeline": the models it runs, each input mapped (pipelines.py)."""
    python: str | None = Field(None, min_length=1)
    """engine = "python" or "sklearn": the interpreter the workers run under (default: the
    server's); it needs numpy (and scikit-learn for sklearn)."""
    timeout_s: float | None = Field(None, gt=0)
    """engine = "python" or "sklearn": a predict running longer fails its requests, and the
    worker is killed and restarted (default: [batching] timeout_us, else no limit)."""

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        if not DEVICE.match(value):
            raise ValueError(
                f"device {value!r}: use cpu, cuda, cuda:N, auto, or an OpenVINO device name "
                "such as GPU or GPU.1"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.batching is not None:
            if self.max_batch_size == 0:
                raise ValueError("[batching] needs max_batch_size > 0")
            too_big = [n for n in self.batching.preferred_batch_sizes if n > self.max_batch_size]
            if too_big:
                raise ValueError(
                    f"[batching] preferred_batch_sizes {too_big} exceed max_batch_size "
                    f"{self.max_batch_size}"
                )
        for kind, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [t.name for t in tensors or ()]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{kind}: duplicate tensor name(s) {duplicates}")
            if tensors == ():
                raise ValueError(f"{kind}: declare at least one tensor or leave {kind} out")
        for output, name in self.labels.items():
            if not LABELS_FILE.fullmatch(name) or name in (".", ".."):
                raise ValueError(
                    f"labels.{output}: {name!r} must be a file name in the model folder"
                )
        declared = {t.name for t in self.inputs or ()}
        unknown = sorted(set(self.images) - declared) if self.inputs else []
        if unknown:
            raise ValueError(f"images.{unknown[0]}: no input of that name is declared")
        pipeline = self.engine == "pipeline"
        if pipeline != bool(self.steps):
            raise ValueError('[[steps]] are for engine = "pipeline", which needs at least one')
        for t in self.outputs or ():
            if (t.source is None) == pipeline:
                raise ValueError(
                    f"outputs: '{t.name}' needs from = \"step.OUTPUT\" (a pipeline's output)"
                    if pipeline
                    else f"outputs: '{t.name}': from = ... is for engine = \"pipeline\""
                )
        workers = self.engine in ("python", "sklearn")
        for key in ("python", "timeout_s"):
            if getattr(self, key) is not None and not workers:
                raise ValueError(f'{key} is for engine = "python" or "sklearn"')
        for t in self.outputs or ():
            if t.method is not None and self.engine != "sklearn":
                raise ValueError(f"outputs: '{t.name}': method = ... is for engine = \"sklearn\"")
        if self.file is not None and (
            "/" in self.file or "\\" in self.file or self.file in ("", ".", "..")
        ):
            raise ValueError(
                f"file must be a file name inside the version folder, got {self.file!r}"
            )
        return self

    def batch_shape(self, spec: TensorSpec) -> tuple[int, ...]:
        """The full shape a request sends for `spec`: with the batch dim when batching."""
        return (-1, *spec.shape) if self.max_batch_size > 0 else spec.shape
