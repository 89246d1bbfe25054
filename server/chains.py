"""Pipeline steps that feed each other, handed from engine thread to engine thread.

A pipeline step run through `DataPlane.infer` costs the event loop a submit, a wake-up by
`Completions` and the resumption of the request's coroutine: for a small model, more than
the HTTP work of the whole request (docs/performance.md, "Pipelines"). When consecutive
steps each wait for the one before (a wave of one step after a wave of one step), a `Chain`
runs them without the loop in between: the engine thread that finishes a step builds the
next step's request from its outputs, checks it against the next model's schema, and puts
it in that model's queue, where it batches with direct requests like any other. Only the
last step's answer goes back to the loop.

What stays the same as through `DataPlane.infer`: each step's model checks its request
(`ModelVersion.check`), its queue, batching, instances and instance statistics apply, and
its request statistics count the step (success or failure, with its duration); a failing
step's error names the step. Steps whose model has the response cache or image inputs, or
is a pipeline itself, are not chained: they run through `DataPlane.infer`.

Every pool of a chain counts the request as pending from its start to its end, so a version
that is unloaded meanwhile waits for it (`InstancePool.drain`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .counters import failure_reason
from .errors import CinferError
from .inference import InferInput, InferRequest
from .model_config import Step
from .models import ModelVersion
from .scheduler import Job, Outputs, Result

#: The results left in a chain's values by step `name`: "name.OUTPUT".
Values = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Link:
    """One step of a chain: the step, the version that serves it and its input specs."""

    step: Step
    found: ModelVersion
    datatypes: Mapping[str, str]
    """The step model's input datatypes by name."""


def chainable(found: ModelVersion) -> bool:
    """A version whose requests need nothing on the loop between decoding and the engine."""
    return (
        not found.pipeline
        and found.pool is not None
        and found.images is None
        and not found.config.cache.enabled
    )


class Chain:
    """One pipeline request's run of chained steps; `run` awaits the last step's outputs."""

    def __init__(self, links: Sequence[Link], values: Values) -> None:
        self.links = links
        self.values = values
        self.position = 0
        """The step now queued or running (written by engine threads, read after the end)."""
        self.started = [0] * len(links)
        self.ended = [0] * len(links)

    async def run(self) -> Values:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        pools = {id(link.found.pool): link.found.pool for link in self.links}
        try:
            first = self._job(0, future)
        except CinferError as exc:
            self._count(exc)
            raise self._named(exc) from exc
        for pool in pools.values():
            pool.pending += 1  # type: ignore[union-attr]
        try:
            first.pool.put(first)
        except CinferError as exc:
            for pool in pools.values():
                pool._finished()  # type: ignore[union-attr]
            self._count(exc)
            raise self._named(exc) from exc
        try:
            await future
        except CinferError as exc:
            self._count(exc)
            raise self._named(exc) from exc
        except (asyncio.CancelledError, Exception) as exc:
            self._count(exc)
            raise
        self._count(None)
        return self.values

    # -- engine threads (and the loop, for the first step) --------------------------------

    def _job(self, position: int, future: asyncio.Future[Outputs]) -> ChainJob:
        """The request of step `position` from the values so far, checked by its model."""
        link = self.links[position]
        self.position = position
        self.started[position] = time.perf_counter_ns()
        values, step = self.values, link.step
        inputs = [InferInput(k, link.datatypes[k], values[r]) for k, r in step.inputs.items()]
        layout = tuple((t.name, t.datatype, t.array.shape, t.array.dtype.str) for t in inputs)
        request = InferRequest(inputs, signature=("step", step.name, layout))
        arrays, outputs, rows = link.found.check(request)
        pool = link.found.pool
        key = (
            tuple((name, a.dtype, a.shape[1:]) for name, a in arrays.items())
            if pool._batching  # type: ignore[union-attr]
            else None
        )
        return ChainJob(arrays, outputs, rows, key, future, pool, self)

    def then(self, job: ChainJob, outputs: Outputs) -> Result | None:
        """Step `position` answered (on its engine thread): queue the next step, or give
        the whole chain's result to deliver to the loop."""
        position = self.position
        self.ended[position] = time.perf_counter_ns()
        name = self.links[position].step.name
        for key, array in outputs.items():
            self.values[f"{name}.{key}"] = array
        if position + 1 == len(self.links):
            return job, outputs, None
        try:
            following = self._job(position + 1, job.future)
            following.pool.put(following)
        except Exception as exc:
            return job, None, exc
        return None

    # -- the loop, at the end -------------------------------------------------------------

    def _count(self, error: BaseException | None) -> None:
        """Each step's request statistics, as `DataPlane.infer` would have counted them."""
        now = time.perf_counter_ns()
        for position, link in enumerate(self.links[: self.position + 1]):
            started, ended = self.started[position], self.ended[position]
            requests = link.found.requests
            if position < self.position or (error is None and ended):
                requests.succeeded(ended - started)
            elif started:
                reason = "CANCELED" if isinstance(error, asyncio.CancelledError) else None
                requests.failed(reason or failure_reason(error), now - started)

    def _named(self, exc: CinferError) -> CinferError:
        step = self.links[self.position].step
        return type(exc)(f"step '{step.name}' (model {step.model}): {exc.message}")


class ChainJob(Job):
    """A step's request in its model's queue, carrying the chain it belongs to."""

    __slots__ = ("chain",)

    def __init__(
        self,
        inputs: Mapping[str, Any],
        outputs: Sequence[str],
        rows: int,
        key: Any,
        future: asyncio.Future[Outputs],
        pool: Any,
        chain: Chain,
    ) -> None:
        super().__init__(inputs, outputs, rows, key, future, pool)
        self.chain = chain

    def then(self, outputs: Outputs) -> Result | None:
        return self.chain.then(self, outputs)

    def finished(self) -> None:
        """On the loop, once the chain has ended: every pool it counted as pending."""
        pools = {id(link.found.pool): link.found.pool for link in self.chain.links}
        for pool in pools.values():
            pool._finished()  # type: ignore[union-attr]
