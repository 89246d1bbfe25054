"""Reading a run's input as pieces, from any row on (a resumed run starts after the rows its
output holds): a JSONL file of v2 requests, a NumPy array, a folder of files; CSV and Parquet
are in tabular.py. Blocking: the runner reads in a thread, a chunk of pieces ahead.

Every input has a known number of rows (`total`), and a row that cannot be read (a blank
JSONL line is one; tabular.py has the CSV and Parquet cases) becomes a piece with an error in
its place, so positions never shift.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from ..datatypes import NUMPY
from .rows import BatchError, Piece, Schema, Tensor

CHUNK_ROWS = 2048
"""Rows read at a time (in whole pieces): enough to keep a window of requests in flight."""


class Source(Protocol):
    """A run's input."""

    total: int
    """Rows in the input."""

    def key(self, index: int) -> str | None:
        """The name the output gives row `index` beside its index (a folder's file names)."""

    def pieces(self, start: int) -> Iterator[list[Piece]]:
        """Blocking: the pieces from row `start` to the end, in order, a chunk at a time."""

    def close(self) -> None: ...


def cut(start: int, values: np.ndarray, bad: Mapping[int, str], rows: int) -> Iterator[Piece]:
    """Pieces of at most `rows` consecutive good rows of `values` (row 0 is input row
    `start`), and one error piece in place of each row of `bad` (offsets into `values`)."""
    count = len(values)
    if not bad:
        for i in range(0, count, rows):
            part = values[i : i + rows]
            yield Piece(start + i, len(part), part)
        return
    run = 0
    for i in [*sorted(bad), count]:
        for j in range(run, i, rows):
            part = values[j : min(j + rows, i)]
            yield Piece(start + j, len(part), part)
        if i < count:
            yield Piece(start + i, 1, None, error=bad[i])
        run = i + 1


def cast(values: np.ndarray, tensor: Tensor, where: str) -> np.ndarray:
    """`values` as the input's datatype (contiguous): numbers to numbers of the same kind or
    wider (float64 to FP32, int to FP32 too); anything else is a BatchError naming both."""
    if tensor.datatype == "BYTES":
        if values.dtype.kind not in "SUO":
            raise BatchError(f"{where}: {values.dtype} values, input '{tensor.name}' is BYTES")
        out = np.empty(values.shape, dtype=object)
        flat = out.reshape(-1)
        for i, value in enumerate(values.reshape(-1)):
            flat[i] = value.encode() if isinstance(value, str) else bytes(value)
        return out
    target = NUMPY[tensor.datatype]
    if values.dtype == target:
        return np.ascontiguousarray(values)
    if values.dtype.kind not in "biuf" or not np.can_cast(values.dtype, target, "same_kind"):
        raise BatchError(
            f"{where}: {values.dtype} values cannot feed input '{tensor.name}' ({tensor.datatype})"
        )
    return np.ascontiguousarray(values, dtype=target)


def fits(shape: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return len(shape) == len(want) and all(w in (-1, d) for d, w in zip(shape, want))


def count_lines(path: Path) -> int:
    """Lines in a file; a last line without a newline counts."""
    count, last = 0, b"\n"
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


class JSONLines:
    """One v2 infer request per line; each line is one output row, whatever it holds. A line
    that is not a request (blank, bad JSON, a tensor the model refuses) is an error row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.total = count_lines(path)

    def key(self, index: int) -> str | None:
        return None

    def pieces(self, start: int) -> Iterator[list[Piece]]:
        with open(self.path, "rb") as file:
            for _ in range(start):
                file.readline()
            chunk: list[Piece] = []
            for index, line in enumerate(file, start):
                body = line.rstrip(b"\r\n")
                if body.strip():
                    chunk.append(Piece(index, 1, body))
                else:
                    chunk.append(Piece(index, 1, None, error="an empty line is not a request"))
                if len(chunk) == CHUNK_ROWS:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

    def close(self) -> None:
        pass


class NumpyRows:
    """A .npy array: its first dim is the rows, the rest each row's shape."""

    def __init__(self, path: Path, schema: Schema, rows: int) -> None:
        tensor = schema.single("NumPy")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BatchError(f"input {path}: not a NumPy .npy file: {exc}") from None
        want = schema.row_shape()
        if array.ndim == 0 or not fits(array.shape[1:], want):
            raise BatchError(
                f"input {path}: an array of shape {list(array.shape)}, so rows of "
                f"{list(array.shape[1:])}; input '{tensor.name}' takes rows of {list(want)}"
            )
        self.array = array
        self.tensor = tensor
        self.rows = rows
        self.total = int(array.shape[0])
        cast(array[:0], tensor, f"input {path}")  # the datatype, before any row is sent

    def key(self, index: int) -> str | None:
        return None

    def pieces(self, start: int) -> Iterator[list[Piece]]:
        step = max(self.rows, CHUNK_ROWS // self.rows * self.rows)
        for i in range(start, self.total, step):
            values = cast(self.array[i : i + step], self.tensor, "")
            yield list(cut(i, values, {}, self.rows))

    def close(self) -> None:
        del self.array


class Folder:
    """A folder of files, in name order (hidden ones left out), each one element of the
    model's BYTES input: an image model's images, decoded by the model as online."""

    def __init__(self, path: Path, schema: Schema, rows: int) -> None:
        tensor = schema.single("A folder's")
        if tensor.datatype != "BYTES":
            raise BatchError(
                f"input {path}: a folder's files feed an image (BYTES) input; input "
                f"'{tensor.name}' of model '{schema.model}' is {tensor.datatype}"
            )
        self.path = path
        self.names = sorted(
            p.name for p in path.iterdir() if not p.name.startswith(".") and p.is_file()
        )
        self.rows = rows
        self.total = len(self.names)

    def key(self, index: int) -> str | None:
        return self.names[index] if index < self.total else None

    def pieces(self, start: int) -> Iterator[list[Piece]]:
        for first in range(start, self.total, CHUNK_ROWS):
            names = self.names[first : first + CHUNK_ROWS]
            files = np.empty(len(names), dtype=object)
            bad = {}
            for i, name in enumerate(names):
                try:
                    files[i] = (self.path / name).read_bytes()
                except OSError as exc:
                    bad[i] = f"{name} cannot be read: {exc.strerror or exc}"
            chunk = list(cut(first, files, bad, self.rows))
            for piece in chunk:
                offset = piece.index - first
                piece.names = names[offset : offset + piece.count]
            yield chunk

    def close(self) -> None:
        pass
