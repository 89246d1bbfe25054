"""Rows of numbers for a model with one input: CSV and Parquet. A row is one element of the
batch dim; its values, flattened, fill the input's per-row shape (``[4]`` takes 4 values,
``[1, 28, 28]`` 784).

CSV: one row per line, the values separated by commas; a first line that is not all numbers
is a header, and is not a row. Parquet: one column per value (the header's order), or one
list column holding each row's values; a BYTES input takes one string or binary column.

A row that cannot be read (a blank line, a value that is not a number, too few or too many
values, a null) is an error row in its place; the rows around it go on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ..datatypes import NUMPY
from .inputs import CHUNK_ROWS, cast, count_lines, cut
from .rows import BatchError, Piece, Schema, Tensor


def _width(schema: Schema, tensor: Tensor, kind: str) -> tuple[tuple[int, ...], int]:
    shape = schema.row_shape()
    if -1 in shape:
        raise BatchError(
            f"{kind} rows have a fixed number of values; input '{tensor.name}' takes rows of "
            f"{list(shape)} (-1: any size): write its requests as JSONL, or a .npy array"
        )
    return shape, math.prod(shape)


def _parsed(tensor: Tensor) -> np.dtype:
    """The dtype CSV text is read as (then cast): what numpy can parse for the datatype."""
    target = NUMPY[tensor.datatype]
    if tensor.datatype == "BOOL":
        return np.dtype(np.uint8)
    return target if target.kind in "iuf" and tensor.datatype != "FP16" else np.dtype(np.float32)


class CSVRows:
    def __init__(self, path: Path, schema: Schema, rows: int) -> None:
        tensor = schema.single("CSV")
        if tensor.datatype == "BYTES":
            raise BatchError(
                f"input {path}: CSV rows are numbers; input '{tensor.name}' is BYTES (give a "
                "folder of files, or JSONL requests)"
            )
        self.shape, self.width = _width(schema, tensor, "CSV")
        self.path, self.tensor, self.rows = path, tensor, rows
        self.dtype = _parsed(tensor)
        with open(path, encoding="utf-8-sig", newline="") as file:
            first = file.readline()
        self.header = bool(first.strip()) and self._parse([first.rstrip("\r\n")]) is None
        self.total = count_lines(path) - self.header

    def key(self, index: int) -> str | None:
        return None

    def pieces(self, start: int) -> Iterator[list[Piece]]:
        with open(self.path, encoding="utf-8-sig", errors="replace", newline="") as file:
            lines = (line.rstrip("\r\n") for line in file)
            for _ in islice(lines, start + self.header):
                pass
            index = start
            while chunk := list(islice(lines, CHUNK_ROWS)):
                values, bad = self._rows(chunk)
                yield list(cut(index, values, bad, self.rows))
                index += len(chunk)

    def _rows(self, lines: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        """The lines' values as [len(lines), *shape] (zeros where a line is bad), and why
        each bad line is."""
        if all(line.strip() for line in lines):
            values = self._parse(lines)
            if values is not None and values.shape[1] == self.width:
                return self._shaped(values), {}
        out = np.zeros((len(lines), self.width), self.dtype)
        bad: dict[int, str] = {}
        for i, line in enumerate(lines):
            if not line.strip():
                bad[i] = "an empty line is not a row"
                continue
            try:
                row = np.loadtxt([line], delimiter=",", dtype=self.dtype, comments=None,
                                 quotechar='"', ndmin=2)  # fmt: skip
            except ValueError as exc:
                bad[i] = f"not a row of numbers: {_where(exc)}"
                continue
            if row.shape[1] != self.width:
                bad[i] = (
                    f"{row.shape[1]} values; input '{self.tensor.name}' takes {self.width} per "
                    f"row (shape {list(self.shape)})"
                )
                continue
            out[i] = row[0]
        return self._shaped(out), bad

    def _parse(self, lines: list[str]) -> np.ndarray | None:
        try:
            return np.loadtxt(lines, delimiter=",", dtype=self.dtype, comments=None,
                              quotechar='"', ndmin=2)  # fmt: skip
        except ValueError:
            return None

    def _shaped(self, values: np.ndarray) -> np.ndarray:
        values = cast(values, self.tensor, f"input {self.path}")
        if self.tensor.datatype == "BOOL":
            values = values.astype(np.bool_)
        return values.reshape((len(values), *self.shape))

    def close(self) -> None:
        pass


def _where(exc: ValueError) -> str:
    """numpy's message about one line, its column counted from 1 as in a spreadsheet."""
    found = re.search(r" at row \d+, column (\d+)\.?$", str(exc))
    if found is None:
        return str(exc)
    return f"{str(exc)[: found.start()]} (column {found.group(1)})"


class ParquetRows:
    def __init__(self, path: Path, schema: Schema, rows: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tensor = schema.single("Parquet")
        try:
            self.file = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise BatchError(f"input {path}: not a Parquet file: {exc}") from None
        self.path, self.tensor, self.rows = path, tensor, rows
        self.shape, self.width = (
            ((), 1) if tensor.datatype == "BYTES" else _width(schema, tensor, "Parquet")
        )
        arrow = self.file.schema_arrow
        kind = arrow.field(0).type if len(arrow) == 1 else None
        self.listed = kind is not None and (
            pa.types.is_list(kind)
            or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)
        )
        if tensor.datatype == "BYTES" and (len(arrow) != 1 or self.listed):
            raise BatchError(
                f"input {path}: a BYTES input takes one string or binary column; the file has "
                f"{', '.join(arrow.names)}"
            )
        if not self.listed and tensor.datatype != "BYTES" and len(arrow) != self.width:
            raise BatchError(
                f"input {path}: {len(arrow)} columns ({', '.join(arrow.names[:8])}"
                f"{', ...' if len(arrow) > 8 else ''}); input '{tensor.name}' takes "
                f"{self.width} values per row (shape {list(self.shape)}): one column per "
                "value, or one list column"
            )
        self.total = self.file.metadata.num_rows

    def key(self, index: int) -> str | None:
        return None

    def pieces(self, start: int) -> Iterator[list[Piece]]:
        groups, first = [], 0
        metadata = self.file.metadata
        for group in range(metadata.num_row_groups):  # skip the groups a resume has done
            rows = metadata.row_group(group).num_rows
            if first + rows > start:
                groups.append(group)
            else:
                first += rows
        if not groups:
            return
        index = first
        for batch in self.file.iter_batches(batch_size=CHUNK_ROWS, row_groups=groups):
            skip = max(0, start - index)
            values, bad = self._rows(batch.slice(skip))
            yield list(cut(index + skip, values, bad, self.rows))
            index += batch.num_rows

    def _rows(self, batch: Any) -> tuple[np.ndarray, dict[int, str]]:
        import pyarrow as pa
        import pyarrow.compute as pc

        count = batch.num_rows
        bad: dict[int, str] = {}
        names = batch.schema.names
        for name, column in zip(names, batch.columns):
            if column.null_count:
                for i in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)):
                    bad.setdefault(int(i), f"a null in column '{name}'")
        where = f"input {self.path}"
        if self.tensor.datatype == "BYTES":
            values = np.empty(count, dtype=object)
            values[:] = [v if v is not None else b"" for v in batch.column(0).to_pylist()]
            return cast(values, self.tensor, where), bad
        dtype = NUMPY[self.tensor.datatype]
        if not self.listed:
            columns = [c.fill_null(0).to_numpy(zero_copy_only=False) for c in batch.columns]
            values = np.column_stack(columns) if columns else np.zeros((count, 0))
            return cast(values, self.tensor, where).reshape((count, *self.shape)), bad
        column = batch.column(0)
        lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
        out = np.zeros((count, self.width), dtype)
        wrong = np.flatnonzero(lengths != self.width)
        for i in wrong:
            bad.setdefault(
                int(i),
                f"{lengths[i]} values in column '{names[0]}'; input '{self.tensor.name}' takes "
                f"{self.width} per row (shape {list(self.shape)})",
            )
        good = np.flatnonzero(lengths == self.width)
        if len(good):
            kept = column.take(pa.array(good)) if len(good) < count else column
            flat = kept.flatten().fill_null(0).to_numpy(zero_copy_only=False)
            out[good] = cast(flat.reshape(len(good), self.width), self.tensor, where)
        return out.reshape((count, *self.shape)), bad

    def close(self) -> None:
        self.file.close()
