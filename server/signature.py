"""The effective IO schema of a version: model.toml's declaration checked against the model file.

When model.toml declares no inputs/outputs they are derived from the file; when it does, each
declared tensor must exist in the file with the same datatype, rank and fixed dims. A -1 the
user declared where the file fixes a size takes the file's size, so the API reports what the
engine will actually accept.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ModelLoadError
from .model_config import ModelConfig, TensorSpec


def resolve(
    config: ModelConfig, found_inputs: Sequence[TensorSpec], found_outputs: Sequence[TensorSpec]
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) as the API reports them: shapes without the batch dim when batching."""
    inputs = _side("input", config, config.inputs, found_inputs, need_all=True)
    outputs = _side("output", config, config.outputs, found_outputs, need_all=False)
    return inputs, outputs


def _side(
    kind: str,
    config: ModelConfig,
    declared: Sequence[TensorSpec] | None,
    found: Sequence[TensorSpec],
    need_all: bool,
) -> tuple[TensorSpec, ...]:
    batched = config.max_batch_size > 0
    by_name = {t.name: t for t in found}
    if declared is None:
        return tuple(_strip_batch(kind, t) if batched else t for t in found)
    result = []
    for spec in declared:
        file_spec = by_name.get(spec.name)
        if file_spec is None:
            names = ", ".join(sorted(by_name)) or "none"
            raise ModelLoadError(
                f"declared {kind} '{spec.name}' is not in the model file (it has: {names})"
            )
        if spec.datatype != file_spec.datatype:
            raise ModelLoadError(
                f"{kind} '{spec.name}': declared datatype {spec.datatype}, "
                f"model file has {file_spec.datatype}"
            )
        want = config.batch_shape(spec)
        have = file_spec.shape
        if len(want) != len(have):
            raise ModelLoadError(
                f"{kind} '{spec.name}': declared shape {list(want)} (rank {len(want)}"
                f"{', batch dim included' if batched else ''}) but the model file has "
                f"{list(have)} (rank {len(have)})"
            )
        if batched:
            _strip_batch(kind, file_spec)
        merged = []
        for axis, (w, h) in enumerate(zip(want, have)):
            if w != -1 and h != -1 and w != h:
                raise ModelLoadError(
                    f"{kind} '{spec.name}': declared shape {list(want)} but the model file has "
                    f"{list(have)} (dim {axis}: {w} vs {h})"
                )
            merged.append(h if w == -1 else w)
        shape = tuple(merged[1:] if batched else merged)
        result.append(spec.model_copy(update={"shape": shape}))
    if need_all:
        missing = sorted(set(by_name) - {t.name for t in declared})
        if missing:
            raise ModelLoadError(
                f"model file {kind}(s) {missing} are not declared in model.toml; declare every "
                f"{kind} or leave [[{kind}s]] out to derive them"
            )
    return tuple(result)


def _strip_batch(kind: str, spec: TensorSpec) -> TensorSpec:
    if not spec.shape or spec.shape[0] != -1:
        raise ModelLoadError(
            f"{kind} '{spec.name}' has shape {list(spec.shape)} in the model file: "
            "max_batch_size > 0 needs a dynamic first (batch) dimension; "
            "set max_batch_size = 0 to serve fixed shapes"
        )
    return spec.model_copy(update={"shape": spec.shape[1:]})
