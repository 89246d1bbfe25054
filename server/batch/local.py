"""The model run in this process: the repository's reconciler loads the one model as
`cinfer serve` would (the same engine, instance pool and batcher), and each piece goes through
`DataPlane.exchange` like an online request: checked against the schema, image files decoded,
queued, batched with the pieces beside it, counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from .. import affinity
from ..dataplane import DataPlane
from ..errors import CinferError, NotFound, Unavailable
from ..heap import Collector
from ..http.codec import decode_request
from ..inference import InferInput, InferRequest, InferResponse, RequestedOutput
from ..models import ModelVersion
from ..reconciler import Reconciler
from .rows import Answer, Piece, Schema, TargetFailed, Tensor

log = logging.getLogger("cinfer")

RETRIES = 8
"""Tries for a piece the model answers 503 (its queue full or timed out), backing off."""
SWITCH_S = 0.0005
"""The GIL's switch interval during a run (CPython's default: 5 ms). The writer thread
encodes JSON with the GIL held, call after call; an engine thread back from a batch, or the
event loop with the next piece, waited up to the whole interval for it, while the engine
sat idle (docs/performance.md, "cinfer batch")."""


@contextlib.asynccontextmanager
async def loaded(
    root: Path,
    model: str,
    version: str | None,
    max_image_pixels: int,
    pin: bool,
    instances: int | None = None,
) -> AsyncIterator[DataPlane]:
    """A DataPlane over `root` with `model` loaded (explicit mode: only that one; with
    `instances` engine instances when given, else model.toml's), for the block's length;
    TargetFailed when it cannot load. The process is set up as `cinfer serve`
    sets it up (the event loop's core pinned with `pin`, the server's garbage-collector
    policy), and put back as it was after the block."""
    core = affinity.python_core() if pin else None
    affinity.pin(core)  # the event loop's core, shared by the engine-calling threads
    heap = Collector()
    heap.install()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_S)
    dataplane = DataPlane(Reconciler(root, core, heap, max_image_pixels, instances), "explicit")
    try:
        await dataplane.start()
        await dataplane.wait_ready()
        try:
            await dataplane.load_model(model, None)
            dataplane.serving(model, version)
        except CinferError as exc:
            raise TargetFailed(str(exc)) from exc
        yield dataplane
    finally:
        await dataplane.stop()
        sys.setswitchinterval(switch)
        heap.uninstall()
        affinity.release()


def schema_of(found: ModelVersion, classification: int) -> Schema:
    config = found.config
    labelled = tuple(t.name for t in config.outputs or () if t.name in found.labels)
    types = {t.name: t.datatype for t in config.outputs or ()}
    outputs = tuple(types)
    if classification:  # as a form's classification=N: the labelled outputs, or all
        outputs = labelled or outputs
        types = dict.fromkeys(outputs, "BYTES")
    return Schema(
        model=found.name,
        version=str(found.version),
        inputs=tuple(
            Tensor(t.name, t.datatype, config.batch_shape(t)) for t in config.inputs or ()
        ),
        outputs=outputs,
        max_batch_size=config.max_batch_size,
        output_types=tuple(types[name] for name in outputs),
    )


class Local:
    """Pieces in, answers out, through `dataplane` in this process."""

    def __init__(
        self, dataplane: DataPlane, schema: Schema, version: str | None, classification: int
    ) -> None:
        self.dataplane = dataplane
        self.schema = schema
        self.version = version
        self._input = schema.inputs[0]
        self._stacked = schema.stacked if len(schema.inputs) == 1 else True
        self._outputs = (
            [RequestedOutput(name, False, classification) for name in schema.outputs]
            if classification
            else None
        )

    def describe(self) -> str:
        """Where the run's rows go, for its first line."""
        found, pool = self.dataplane.serving(self.schema.model, self.version)
        count = pool.instances
        return (
            f"model {found.name} version {found.version} in this process: {count} engine "
            f"instance{'s' if count > 1 else ''} on {found.config.device}"
        )

    def window(self) -> tuple[int, int]:
        """Rows and requests to keep in flight: enough that a free instance always finds a
        full batch queued (JSONL requests, a row each, fill one together), within the
        model's queue. The runner refills when the oldest piece is answered, and instances
        answer out of order, so each instance gets four batches of slack (two gave 4% less
        on mlp with two instances)."""
        found, pool = self.dataplane.serving(self.schema.model, self.version)
        rows = (4 * pool.instances + 4) * max(1, self.schema.max_batch_size)
        batching = found.config.batching
        return rows, batching.max_queue_size if batching else rows

    async def infer(self, piece: Piece) -> list[Answer]:
        for attempt in range(RETRIES):
            try:
                response = await self.dataplane.exchange(
                    self.schema.model, self.version, lambda: self._request(piece), _keep
                )
            except Unavailable as exc:
                if attempt == RETRIES - 1:
                    raise TargetFailed(str(exc)) from exc
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
                continue
            except NotFound as exc:
                raise TargetFailed(str(exc)) from exc
            except CinferError as exc:  # the model refuses the piece: find the rows it refuses
                if piece.count > 1 and not piece.whole:
                    parts = await asyncio.gather(*(self.infer(row) for row in piece.rows()))
                    return [answer for part in parts for answer in part]
                return [Answer(piece, None, exc.message)]
            outputs = response.outputs
            wanted = response.request.output_names
            if wanted is not None:  # a batch computes what any of its requests asked for
                outputs = {name: outputs[name] for name in wanted if name in outputs}
            error = split_error(outputs, piece, self._stacked)
            if error:
                return [Answer(piece, None, error)]
            return [Answer(piece, outputs, None, response.model_version, response.id)]
        raise AssertionError("unreachable")

    def _request(self, piece: Piece) -> InferRequest:
        data = piece.data
        if isinstance(data, bytes):  # a JSONL line: the v2 JSON, decoded as online
            return decode_request(data, None)
        assert data is not None
        tensor = self._input
        array = data if self._stacked else data[0]
        return InferRequest([InferInput(tensor.name, tensor.datatype, array)], self._outputs)


def split_error(outputs: Mapping[str, object], piece: Piece, stacked: bool) -> str | None:
    """Why outputs do not split into the piece's rows (a model that does not answer row by
    row along the first dim), or None."""
    if piece.whole or not stacked:
        return None
    for name, array in outputs.items():
        shape = getattr(array, "shape", ())
        if not shape or shape[0] != piece.count:
            return (
                f"output '{name}' has shape {list(shape)}, which does not split into the "
                f"{piece.count} rows sent: run with --batch-size 1"
            )
    return None


def _keep(response: InferResponse) -> InferResponse:
    return response
