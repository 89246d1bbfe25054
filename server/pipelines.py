"""Pipelines (engine = "pipeline"): the wiring of [[steps]] checked, and the order they run in.

A pipeline's model.toml declares its `[[inputs]]`, `[[steps]]` that each name a model and map
every input of that model from a pipeline input (``"INPUT0"``) or an earlier step's output
(``"a.OUTPUT0"``), and `[[outputs]]` with ``from = "step.OUTPUT"``. `check` verifies that wiring
against the step models' configs (every tensor exists, datatypes equal, shapes agree with -1
matching anything, no step reads itself or a later step); `waves` groups the steps so that
those whose inputs are all available can run together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from .chains import Chain, Link, chainable
from .errors import CinferError, ConfigError, Unavailable
from .inference import InferInput, InferRequest, InferResponse
from .model_config import ModelConfig, Step, TensorSpec
from .models import Model, ModelState, ModelVersion


def _split(ref: str) -> tuple[str, str] | None:
    """ "step.OUTPUT" -> (step, OUTPUT); a pipeline input's name (no dot) -> None."""
    step, dot, output = ref.partition(".")
    return (step, output) if dot else None


def _compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def _full_shape(config: ModelConfig, spec: TensorSpec) -> tuple[int, ...]:
    return config.batch_shape(spec)


def check(name: str, config: ModelConfig, steps: Mapping[str, ModelConfig]) -> None:
    """Raise a ConfigError naming the pipeline, the step and the key when the wiring of
    pipeline `name` does not hold; `steps` maps each step's name to its model's config."""
    where = f"pipeline '{name}'"
    if not config.inputs or not config.outputs:
        raise ConfigError(f"{where}: declare its [[inputs]] and [[outputs]]")
    inputs = {t.name: t for t in config.inputs}
    # What each reference may point at, with the config its shape is read against.
    available: dict[str, tuple[ModelConfig, TensorSpec]] = {
        n: (config, t) for n, t in inputs.items()
    }
    seen: set[str] = set()
    for step in config.steps:
        at = f"{where}, step '{step.name}'"
        if step.name in seen:
            raise ConfigError(f"{at}: a step of that name comes earlier")
        if step.name in inputs:
            raise ConfigError(f"{at}: the name is also a pipeline input's")
        model = steps.get(step.name)
        if model is None:
            raise ConfigError(f"{at}: model '{step.model}' is not in the repository")
        declared = {t.name: t for t in model.inputs or ()}
        if not declared or not model.outputs:
            raise ConfigError(
                f"{at}: model '{step.model}' must declare its [[inputs]] and [[outputs]]"
            )
        missing = sorted(set(declared) - set(step.inputs))
        if missing:
            raise ConfigError(f"{at}: input '{missing[0]}' of model '{step.model}' is not mapped")
        for key, ref in step.inputs.items():
            target = declared.get(key)
            if target is None:
                raise ConfigError(
                    f"{at}: inputs.{key}: model '{step.model}' has no input of that name"
                )
            _match(f"{at}: inputs.{key} = {ref!r}", ref, available, seen, model, target)
        seen.add(step.name)
        for out in model.outputs:
            available[f"{step.name}.{out.name}"] = (model, out)
    for out in config.outputs:
        assert out.source is not None  # ModelConfig requires `from` on a pipeline's outputs
        if _split(out.source) is None:
            raise ConfigError(
                f'{where}: outputs.{out.name}: from = {out.source!r} must be "step.OUTPUT"'
            )
        _match(
            f"{where}: outputs.{out.name}: from = {out.source!r}",
            out.source,
            available,
            seen,
            config,
            out,
        )


def _match(
    at: str,
    ref: str,
    available: Mapping[str, tuple[ModelConfig, TensorSpec]],
    seen: set[str],
    config: ModelConfig,
    target: TensorSpec,
) -> None:
    """`ref` must name an available tensor whose datatype and full shape fit `target`'s."""
    split = _split(ref)
    if ref not in available:
        if split is None:
            raise ConfigError(f"{at}: no pipeline input of that name")
        if split[0] not in seen:
            raise ConfigError(f"{at}: step '{split[0]}' is not an earlier step")
        raise ConfigError(f"{at}: step '{split[0]}' has no output '{split[1]}'")
    source_config, source = available[ref]
    if source.datatype != target.datatype:
        raise ConfigError(f"{at}: datatype {source.datatype} where {target.datatype} is needed")
    have, need = _full_shape(source_config, source), _full_shape(config, target)
    if not _compatible(have, need):
        raise ConfigError(f"{at}: shape {list(have)} does not fit {list(need)}")


def waves(steps: tuple[Step, ...]) -> list[list[Step]]:
    """The steps in groups: each group's inputs come only from the pipeline's inputs and
    earlier groups, so a group's steps can run concurrently. Assumes `check` passed."""
    done: set[str] = set()
    left = list(steps)
    groups: list[list[Step]] = []
    while left:
        ready = [
            s
            for s in left
            if all((p := _split(r)) is None or p[0] in done for r in s.inputs.values())
        ]
        if not ready:  # unreachable after `check`: steps only read earlier steps
            raise ConfigError(f"steps {[s.name for s in left]} depend on each other")
        groups.append(ready)
        done.update(s.name for s in ready)
        left = [s for s in left if s.name not in done]
    return groups


def refresh(models: Mapping[str, Model]) -> None:
    """Set every pipeline version READY or UNAVAILABLE (with why) from its steps' states and
    configs now; the reconciler calls it after every change, so a pipeline whose step comes
    back becomes READY by itself."""
    for model in list(models.values()):
        for version in model.versions.values():
            if version.pipeline:
                reason = _why_not_ready(version, models)
                if not reason and not version.waves:
                    version.waves = tuple(tuple(w) for w in waves(version.config.steps))
                version.state = ModelState.UNAVAILABLE if reason else ModelState.READY
                version.reason = reason


def _why_not_ready(version: ModelVersion, models: Mapping[str, Model]) -> str:
    configs: dict[str, ModelConfig] = {}
    for step in version.config.steps:
        at = f"step '{step.name}': model '{step.model}'"
        model = models.get(step.model)
        if model is None:
            return f"{at} is not in the repository"
        try:
            found = model.get(None if step.version is None else str(step.version))
        except CinferError as exc:
            return f"{at} is not ready ({exc})"
        if not found.ready:
            return f"{at} is not ready ({found.state.value}{': ' if found.reason else ''}" + (
                f"{found.reason})"
            )
        configs[step.name] = found.config
    try:
        check(version.name, version.config, configs)
    except ConfigError as exc:
        return str(exc)
    return ""


Infer = Callable[[str, str | None, InferRequest], Awaitable[InferResponse]]


async def run(
    infer: Infer, models: Mapping[str, Model], version: ModelVersion, arrays: dict[str, Any]
) -> dict[str, Any]:
    """Run pipeline `version` on `arrays` (its inputs, checked): each wave's steps at once,
    each through `infer` (the DataPlane's, so the step model batches, counts and logs the
    request as any other); a step output goes on to the next step as the array it is."""
    values: dict[str, Any] = dict(arrays)
    waves, at = version.waves, 0
    while at < len(waves):
        wave = waves[at]
        # Steps that each wait for the one before go from engine thread to engine thread,
        # without the loop between them (chains.py).
        chain = _chain(models, waves, at)
        if chain:
            await Chain(chain, values).run()
            at += len(chain)
            continue
        if len(wave) == 1:  # no task to create for a step that runs alone
            answers = [await _step(infer, models, wave[0], values)]
        else:
            answers = await asyncio.gather(*(_step(infer, models, s, values) for s in wave))
        for step, outputs in zip(wave, answers, strict=True):
            for key, array in outputs.items():
                values[f"{step.name}.{key}"] = array
        at += 1
    return {out.name: values[out.source] for out in version.config.outputs or () if out.source}


def _chain(
    models: Mapping[str, Model], waves: Sequence[Sequence[Step]], at: int
) -> list[Link] | None:
    """The steps of the waves of one step from `at` on whose models can be chained, when
    there are two or more of them."""
    links: list[Link] = []
    for wave in waves[at:]:
        if len(wave) != 1:
            break
        step = wave[0]
        model = models.get(step.model)
        if model is None:
            break
        try:
            found = model.get(None if step.version is None else str(step.version))
        except CinferError:
            break
        if not found.ready or not chainable(found):
            break
        datatypes = {t.name: t.datatype for t in found.config.inputs or ()}
        links.append(Link(step, found, datatypes))
    return links if len(links) > 1 else None


async def _step(
    infer: Infer, models: Mapping[str, Model], step: Step, values: Mapping[str, Any]
) -> dict[str, Any]:
    wanted = None if step.version is None else str(step.version)
    try:
        specs = {t.name: t for t in models[step.model].get(wanted).config.inputs or ()}
        inputs = [InferInput(k, specs[k].datatype, values[ref]) for k, ref in step.inputs.items()]
        # The step's model checks each layout once (ModelVersion.check): the same names,
        # datatypes and shapes make the same signature, as the REST codec's binary headers do.
        layout = tuple((t.name, t.datatype, t.array.shape, t.array.dtype.str) for t in inputs)
        request = InferRequest(inputs, signature=("step", step.name, layout))
        return (await infer(step.model, wanted, request)).outputs
    except KeyError as exc:  # the step model went away since the pipeline was checked
        raise Unavailable(f"step '{step.name}' (model {step.model}): not ready") from exc
    except CinferError as exc:
        failure = type(exc)(f"step '{step.name}' (model {step.model}): {exc.message}")
        raise failure from exc


def step_models(models: Mapping[str, Model], name: str) -> tuple[str, ...]:
    """The models the versions of pipeline `name` run as steps; () for any other model."""
    model = models.get(name)
    if model is None:
        return ()
    found = {s.model: None for v in model.versions.values() if v.pipeline for s in v.config.steps}
    return tuple(found)
