"""What a batch run moves: the model's schema, the pieces of input sent as one request, their
answers, and the output rows they become.

A row's position in the input is its ``index`` (0-based, the line of a JSONL or CSV file, the
row of a table or array, the file of a folder in name order); its output row carries that
index (and the file's name for a folder) with either its outputs, as a v2 infer response
gives them (name, datatype, shape, data), or the error that refused it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from ..datatypes import FROM_NUMPY, datatype_of
from ..errors import CinferError
from ..http.tensors import to_json


class BatchError(CinferError):
    """An input, output or option `cinfer batch` cannot use; the message names it (exit 2)."""


class OutputLocked(BatchError):
    """Another run is writing the same output (exit 75: try again later)."""


class TargetFailed(CinferError):
    """The model or server cannot answer at all (not loaded, unreachable after the retries,
    the token refused): the run stops with its checkpoint written (exit 3)."""


@dataclass(frozen=True, slots=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    """As a request sends it: with the batch dim (-1) first when the model batches."""


@dataclass(frozen=True)
class Schema:
    """What the run needs to know of the model version it runs."""

    model: str
    version: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[str, ...]
    """The outputs each answer holds, in order (the CSV columns)."""
    max_batch_size: int
    output_types: tuple[str, ...] = ()
    """Each output's datatype (BYTES for a classification's), for typed outputs (Parquet)."""

    def single(self, kind: str) -> Tensor:
        """The model's one input, for inputs that carry rows of one tensor."""
        if len(self.inputs) != 1:
            names = ", ".join(t.name for t in self.inputs)
            raise BatchError(
                f"{kind} rows feed a model with one input; model '{self.model}' takes "
                f"{len(self.inputs)} ({names}): write its requests as JSONL instead"
            )
        return self.inputs[0]

    @property
    def stacked(self) -> bool:
        """Whether rows are stacked along the input's first dim (the batch dim, or a -1 first
        dim of a model without batching) or each row is a whole request."""
        return self.max_batch_size > 0 or self.inputs[0].shape[:1] == (-1,)

    def row_shape(self) -> tuple[int, ...]:
        """One row's shape (-1 where any size goes)."""
        shape = self.inputs[0].shape
        return shape[1:] if self.stacked else shape

    def rows_per_request(self, wanted: int | None) -> int:
        """Rows sent as one request: the model's max_batch_size unless fewer are `wanted`."""
        if not self.stacked:
            if wanted not in (None, 1):
                raise BatchError(
                    f"--batch-size {wanted}: model '{self.model}' has no batch dimension "
                    "(max_batch_size = 0 and a fixed first dim): one row per request"
                )
            return 1
        limit = self.max_batch_size or 1024
        if wanted is None:
            return self.max_batch_size or 32
        if not 0 < wanted <= limit:
            raise BatchError(f"--batch-size {wanted}: model '{self.model}' takes 1 to {limit} rows")
        return wanted


@dataclass(slots=True)
class Piece:
    """Consecutive input rows that go to the model as one request."""

    index: int
    """The position of its first row."""
    count: int
    """Output rows it makes: its rows, or 1 for a JSONL request."""
    data: np.ndarray | bytes | None
    """[count, ...] of the one input (image files: BYTES), a JSONL request's bytes, or None
    when the rows could not be read (`error` says why)."""
    names: Sequence[str] | None = None
    """The files' names, for a folder of images."""
    error: str | None = None

    @property
    def whole(self) -> bool:
        """A JSONL request: its answer is one output row, whatever its shapes."""
        return isinstance(self.data, bytes)

    def rows(self) -> list[Piece]:
        """Each row of this piece as a piece of its own (to find the bad ones)."""
        assert isinstance(self.data, np.ndarray)
        return [
            Piece(
                self.index + i,
                1,
                self.data[i : i + 1],
                self.names[i : i + 1] if self.names is not None else None,
            )
            for i in range(self.count)
        ]


@dataclass(slots=True)
class Answer:
    """What the model made of a piece: its outputs, or why it refused it."""

    piece: Piece
    outputs: dict[str, np.ndarray] | None
    """[count, ...] per output when the piece's rows were stacked, else the whole answer."""
    error: str | None = None
    version: str = ""
    id: str | None = None
    """The id a JSONL request gave, echoed as a v2 response does."""


@dataclass(slots=True)
class Output:
    """One output of one row, its JSON already written."""

    name: str
    head: bytes
    """``{"name":...,"datatype":...,"shape":[...],"data":`` (shared by a piece's rows)."""
    data: bytes
    """The values, flattened, as a JSON list."""
    size: int


@dataclass(slots=True)
class Record:
    """One output row."""

    index: int
    file: str | None
    outputs: list[Output] | None
    """As in a v2 infer response: see `outputs_json`."""
    error: str | None
    version: str = ""
    id: str | None = None

    def outputs_json(self) -> bytes:
        """``[{"name", "datatype", "shape", "data"}, ...]``, as a v2 infer response has it."""
        return b"".join(self.outputs_parts())

    def outputs_parts(self) -> list[bytes]:
        """`outputs_json` in parts, for a writer that joins many rows at once (one copy of
        the values, not one per step)."""
        assert self.outputs is not None
        parts = [b"["]
        for output in self.outputs:
            parts += (output.head, output.data, b"},")
        parts[-1] = b"}]"
        return parts


def records(answer: Answer, stacked: bool) -> list[Record]:
    """The output rows of one answer: one per row of its piece (a stacked piece's outputs are
    cut along their first dim, each row answered as a one-row request would be).

    Each row's values are written by orjson straight from the output array (a row of it),
    the rest of its JSON is bytes shared by the piece's rows, and a writer joins the parts
    of many rows in one copy: 1024 floats cost 26 us a row here, 24 us of them orjson's.
    """
    piece = answer.piece
    names = piece.names
    count = piece.count
    if answer.outputs is None:
        error = answer.error or "no answer"
        return [
            Record(piece.index + i, names[i] if names else None, None, error) for i in range(count)
        ]
    split = not (piece.whole or not stacked or count == 1)
    rows = count if split else 1
    columns = [_column(name, array, rows, split) for name, array in answer.outputs.items()]
    return [
        Record(
            piece.index + i,
            names[i] if names else None,
            [column[i] for column in columns],
            None,
            answer.version,
            answer.id if not split else None,
        )
        for i in range(rows)
    ]


def _column(name: str, array: np.ndarray, rows: int, split: bool) -> list[Output]:
    """Output `name` of each of `rows` rows (`split`: cut along the first dim, each row's
    shape then [1, ...])."""
    datatype = FROM_NUMPY.get(array.dtype) or datatype_of(array)
    shape = [1, *array.shape[1:]] if split else list(array.shape)
    head = b'{"name":%b,"datatype":"%b","shape":%b,"data":' % (
        orjson.dumps(name),
        datatype.encode(),
        orjson.dumps(shape),
    )
    size = array.size // rows if rows else 0
    values = to_json(array, datatype)
    if datatype == "BYTES":
        texts = [orjson.dumps(values[i * size : (i + 1) * size]) for i in range(rows)]
    else:  # numbers: orjson reads the array's rows in place
        table = values.reshape(rows, size)
        texts = [orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) for row in table]
    return [Output(name, head, data, size) for data in texts]
