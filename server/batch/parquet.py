"""Output rows as a Parquet dataset: a folder of part files that pandas, pyarrow, polars,
DuckDB and Spark read as one table (``pandas.read_parquet("scores.parquet")``).

    index      int64: the row's position in the input
    file       string: the file's name, for a folder of images (absent otherwise)
    <output>   list<values>: one column per output, the row's values flattened (null for
               a row the model refused); BYTES as binary, BF16 as float32
    error      string: why the model refused the row (null when it answered)

Each `write` is one part, ``part-000000.parquet``, ``part-000001.parquet``, ..., written to
a hidden temporary name, flushed to disk and renamed into place, so the folder only ever
holds whole parts: rows 0 to N-1, and a rerun starts at N (counted from the parts' footers,
without reading their data). The run's lock is an flock on ``.lock`` in the folder.

The values go from the model's output arrays into Parquet as they are: no text is written,
which is what makes this the output to pick for throughput (docs/batch.md, "Throughput").
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .outputs import lock
from .rows import Answer, BatchError, Schema

PART = re.compile(r"^part-(\d{6})\.parquet$")
ARROW: dict[str, pa.DataType] = {
    "BOOL": pa.bool_(),
    "UINT8": pa.uint8(),
    "UINT16": pa.uint16(),
    "UINT32": pa.uint32(),
    "UINT64": pa.uint64(),
    "INT8": pa.int8(),
    "INT16": pa.int16(),
    "INT32": pa.int32(),
    "INT64": pa.int64(),
    "FP16": pa.float16(),
    "FP32": pa.float32(),
    "FP64": pa.float64(),
    "BF16": pa.float32(),
    "BYTES": pa.binary(),
}


class ParquetFolder:
    """A folder of Parquet parts, one per checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self._lock = -1
        self._parts = 0
        self._schema: pa.Schema | None = None
        self._compression: dict[str, str] = {}

    def open(self, schema: Schema, keyed: bool) -> tuple[int, str | None]:
        if self.path.exists() and not self.path.is_dir():
            raise BatchError(
                f"--output {self.name}: a Parquet output is a folder of parts, and this is a "
                "file: give another name"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            lock(fd, self.name)
        except BaseException:
            os.close(fd)
            raise
        self._lock = fd
        for leftover in self.path.glob(".part-*.tmp"):  # a part a killed run left unfinished
            leftover.unlink()
        self._schema = _arrow_schema(schema, keyed)
        # Text compressed, numbers not: a model's floats barely shrink, and compressing them
        # took a tenth of the run's throughput (docs/batch.md, "Throughput").
        self._compression = {
            (f.name if f.name in ("file", "error") else f"{f.name}.list.element"): "snappy"
            for f in self._schema
            if f.type in (pa.string(), pa.list_(pa.binary()))
        }
        names = sorted(p.name for p in self.path.iterdir() if not p.name.startswith("."))
        numbers = []
        for name in names:
            found = PART.match(name)
            if not found:
                raise BatchError(
                    f"{self.name} holds {name}, which is not a part cinfer batch wrote: give "
                    "a new output, or the output of this same input to resume"
                )
            numbers.append(int(found.group(1)))
        if numbers != list(range(len(numbers))):
            raise BatchError(f"{self.name}: parts are missing (it holds {', '.join(names)})")
        rows, last = 0, None
        for name in names:
            try:
                part = pq.ParquetFile(self.path / name)
            except (OSError, pa.ArrowException) as exc:
                raise BatchError(
                    f"{self.path / name}: not a readable Parquet file ({exc})"
                ) from None
            if not part.schema_arrow.equals(self._schema):
                raise BatchError(
                    f"{self.path / name} has the columns {part.schema_arrow.names} "
                    f"({part.schema_arrow.types}); this run writes {self._schema.names} "
                    f"({self._schema.types}): give another output"
                )
            rows += part.metadata.num_rows
            if name == names[-1]:
                last = part
        self._parts = len(names)
        if last is None or last.metadata.num_rows == 0:
            return rows, None
        columns = ["index", "file"] if keyed else ["index"]
        tail = last.read_row_group(last.num_row_groups - 1, columns=columns).to_pydict()
        if tail["index"][-1] != rows - 1:
            raise BatchError(
                f"{self.name}: its last row has index {tail['index'][-1]} but it holds {rows} "
                "rows: it is not the output of one run of this input"
            )
        return rows, tail["file"][-1] if keyed else None

    def write(self, answers: Sequence[Answer], stacked: bool) -> int:
        assert self._schema is not None
        table = _table(self._schema, answers, stacked)
        final = self.path / f"part-{self._parts:06d}.parquet"
        temporary = self.path / f".{final.name}.tmp"
        try:
            with open(temporary, "wb") as file:
                # No dictionary pages for the values (encoding them cost 60 us a row of
                # 1024 floats, five times the rest of the write), statistics for the index.
                pq.write_table(
                    table, file, compression=self._compression, use_dictionary=["error"],
                    write_statistics=["index"],
                )  # fmt: skip
                file.flush()
                os.fsync(file.fileno())
            os.rename(temporary, final)
            directory = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(directory)  # the rename itself survives a power cut
            finally:
                os.close(directory)
        except OSError as exc:
            raise BatchError(f"{final}: {exc.strerror or exc}") from exc
        self._parts += 1
        return int(table.num_rows - table.column("error").null_count)

    def close(self) -> None:
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1


def _arrow_schema(schema: Schema, keyed: bool) -> pa.Schema:
    fields = [pa.field("index", pa.int64(), nullable=False)]
    if keyed:
        fields.append(pa.field("file", pa.string()))
    for name, datatype in zip(schema.outputs, schema.output_types, strict=True):
        fields.append(pa.field(name, pa.list_(ARROW[datatype])))
    fields.append(pa.field("error", pa.string()))
    return pa.schema(fields)


def _table(schema: pa.Schema, answers: Sequence[Answer], stacked: bool) -> pa.Table:
    """The answers' rows as one table, an answer a chunk: each output's chunk is the output
    array itself, cut into rows by offsets (no copy of the values here, and none holding
    the GIL that the engine threads need between batches)."""
    keyed = "file" in schema.names
    outputs = [f for f in schema if f.name not in ("index", "file", "error")]
    indexes: list[np.ndarray] = []
    files: list[str | None] = []
    errors: list[str | None] = []
    chunks: dict[str, list[pa.Array]] = {f.name: [] for f in outputs}
    for answer in answers:
        piece = answer.piece
        count = piece.count
        indexes.append(np.arange(piece.index, piece.index + count, dtype=np.int64))
        if keyed:
            files.extend(piece.names if piece.names is not None else [None] * count)
        if answer.outputs is None:
            errors.extend([answer.error or "no answer"] * count)
            for f in outputs:
                chunks[f.name].append(pa.nulls(count, f.type))
            continue
        split = not (piece.whole or not stacked or count == 1)
        rows = count if split else 1
        errors.extend([None] * rows)
        for f in outputs:
            if f.name not in answer.outputs:  # a JSONL request that asked for other outputs
                chunks[f.name].append(pa.nulls(rows, f.type))
                continue
            flat = np.asarray(answer.outputs[f.name]).reshape(-1)
            size = flat.size // rows
            if flat.size >= 2**31:
                raise BatchError(f"output '{f.name}': more than 2**31 values in one answer")
            offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * np.int32(size))
            chunks[f.name].append(pa.ListArray.from_arrays(offsets, _values(f.name, flat, f.type)))
    columns: list[pa.Array | pa.ChunkedArray] = [
        pa.array(np.concatenate(indexes) if indexes else np.zeros(0, np.int64), pa.int64())
    ]
    if keyed:
        columns.append(pa.array(files, pa.string()))
    for f in outputs:
        columns.append(pa.chunked_array(chunks[f.name], f.type))
    columns.append(pa.array(errors, pa.string()))
    return pa.Table.from_arrays(columns, schema=schema)


def _values(name: str, flat: np.ndarray, column: pa.DataType) -> pa.Array:
    """An output's values as the column's item type (numbers: the array itself)."""
    item = column.value_type
    if pa.types.is_binary(item):
        return pa.array([bytes(v) for v in flat], item)
    if flat.dtype == object or flat.dtype.kind in "SU":
        raise BatchError(f"output '{name}' answered strings; the model declares {item}")
    return pa.array(flat.astype(item.to_pandas_dtype(), copy=False))
