"""Writing output rows, in input order, to a JSONL or CSV file; tables.py has SQLite and
PostgreSQL. The output is the checkpoint: `open` counts the rows it holds (cutting off a
last line that a killed run left half-written), the run starts after them, and every
`write` appends whole rows and hands them to the operating system, so a run killed at any
moment resumes with no row twice and none missing.

Blocking: the runner calls a sink from one writer thread. Each sink holds a lock on its
output until `close` (flock here), so a second run on the same output stops at once with
`OutputLocked` instead of writing beside the first.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import orjson

from .rows import Answer, BatchError, Output, OutputLocked, Record, Schema, records

IOV_MAX = 1024
"""Buffers one writev takes (Linux's limit)."""
TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


class Sink(Protocol):
    """A run's output."""

    name: str
    """As the user gave it, for messages."""

    def open(self, schema: Schema, keyed: bool) -> tuple[int, str | None]:
        """Lock the output, create it or check it holds this run's rows; the rows it holds
        and the file name of the last one (`keyed`: rows carry a file name)."""

    def write(self, answers: Sequence[Answer], stacked: bool) -> int:
        """Append the rows of `answers` (those after the rows written) as one checkpoint;
        the rows among them that carry an error."""

    def close(self) -> None: ...


def lock(fd: int, name: str) -> None:
    """Hold an exclusive flock on `fd` (released when it closes, or the process dies)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputLocked(
            f"{name} is being written by another cinfer batch run (it holds its lock); this "
            "run leaves it alone: rerun once that one has finished, to resume where it stops"
        ) from None


def json_line(record: Record, model: bytes) -> list[bytes]:
    """One JSONL row, in parts to join; `model` is the model's name as JSON. The outputs are
    JSON already (rows.records)."""
    line = b'{"index":%d' % record.index
    if record.file is not None:
        line += b',"file":' + orjson.dumps(record.file)
    if record.outputs is None:
        return [line, b',"error":', orjson.dumps(record.error), b"}\n"]
    line += b',"model_name":%b,"model_version":%b' % (model, orjson.dumps(record.version))
    if record.id is not None:
        line += b',"id":' + orjson.dumps(record.id)
    return [line, b',"outputs":', *record.outputs_parts(), b"}\n"]


class RowSink:
    """A sink written a `Record` at a time (the JSON of its outputs made by rows.records)."""

    def write(self, answers: Sequence[Answer], stacked: bool) -> int:
        rows = [record for answer in answers for record in records(answer, stacked)]
        self.write_rows(rows)
        return sum(1 for row in rows if row.outputs is None)

    def write_rows(self, records: Sequence[Record]) -> None:
        raise NotImplementedError


class LineFile(RowSink):
    """An output file of one row per line, after `header` lines."""

    header = 0

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self._fd = -1

    def _open(self) -> tuple[int, bytes | None, bytes | None]:
        """Lock, drop a torn last line: (rows, the first line, the last whole line)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            lock(fd, self.name)
            size = os.fstat(fd).st_size
            lines, end, first, last = 0, 0, None, None
            with open(fd, "rb", closefd=False) as file:
                position = 0
                for line in file:
                    position += len(line)
                    if not line.endswith(b"\n"):
                        break  # torn: the run that wrote it was killed mid-line
                    lines, end = lines + 1, position
                    if first is None:
                        first = line
                    last = line
            if end < size:
                os.ftruncate(fd, end)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return lines - self.header if lines > self.header else 0, first, last

    def _append(self, parts: list[bytes]) -> None:
        """Write `parts` at the end, with writev: the kernel copies each part into the file,
        where joining them first cost a copy and the page faults of a new buffer (11 us of
        36 for a row of 1024 floats)."""
        for first in range(0, len(parts), IOV_MAX):
            chunk = parts[first : first + IOV_MAX]
            done = os.writev(self._fd, chunk)
            if done < sum(map(len, chunk)):  # a short write (a signal, a full disk): the rest
                view = memoryview(b"".join(chunk))[done:]
                while view:
                    view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


class JSONLinesFile(LineFile):
    """``{"index": 0, "model_name": ..., "model_version": ..., "outputs": [...]}`` per line,
    or ``{"index": 3, "error": "..."}``; a folder's rows also carry ``"file"``."""

    def open(self, schema: Schema, keyed: bool) -> tuple[int, str | None]:
        self.model = orjson.dumps(schema.model)
        rows, _, last = self._open()
        if last is None:
            return 0, None
        try:
            row = orjson.loads(last)
            index, file = row["index"], row.get("file")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise BatchError(
                f"{self.name} holds lines that are not cinfer batch rows: give a new output, "
                "or the output of this same input to resume"
            ) from None
        if index != rows - 1:
            raise BatchError(
                f"{self.name}: its last row has index {index} but it holds {rows} rows: it is "
                "not the output of one run of this input"
            )
        return rows, file

    def write_rows(self, records: Sequence[Record]) -> None:
        model = self.model
        parts: list[bytes] = []
        for record in records:
            parts += json_line(record, model)
        self._append(parts)


class CSVFile(LineFile):
    """A header (``index``, ``file`` for a folder, one column per output, ``error``), then
    a row per line. An output's cell is its one value, or its values flattened as a JSON
    list; no cell holds a line break (a string's are written as ``\\n``)."""

    header = 1

    def open(self, schema: Schema, keyed: bool) -> tuple[int, str | None]:
        self.outputs = schema.outputs
        columns = ["index", *(["file"] if keyed else []), *schema.outputs, "error"]
        self.keyed = keyed
        rows, first, last = self._open()
        line = _csv_line(columns)
        if first is None:
            self._append([line])
            return 0, None
        if first != line:
            raise BatchError(
                f"{self.name} has the columns {first.decode(errors='replace').strip()}; this "
                f"run writes {line.decode().strip()}: give another output"
            )
        if rows == 0 or last is None:
            return 0, None
        cells = next(csv.reader([last.decode(errors="replace")]))
        if cells[0] != str(rows - 1):
            raise BatchError(
                f"{self.name}: its last row has index {cells[0]} but it holds {rows} rows: it "
                "is not the output of one run of this input"
            )
        return rows, cells[1] if keyed else None

    def write_rows(self, records: Sequence[Record]) -> None:
        text = io.StringIO()
        out = csv.writer(text, lineterminator="\n")
        for record in records:
            row: list[object] = [record.index]
            if self.keyed:
                row.append(record.file)
            if record.outputs is None:
                row += [""] * len(self.outputs)
                row.append(_one_line(record.error or ""))
            else:
                given = {output.name: output for output in record.outputs}
                row += [_cell(given.get(name)) for name in self.outputs]
                row.append("")
            out.writerow(row)
        self._append([text.getvalue().encode()])


def _csv_line(cells: list[str]) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(cells)
    return text.getvalue().encode()


def _cell(output: Output | None) -> str:
    if output is None:
        return ""
    if output.size != 1:
        return output.data.decode()
    if output.data.startswith(b'["'):  # one string: as it is
        return _one_line(orjson.loads(output.data)[0])
    return output.data[1:-1].decode()  # one number: without [ ]


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")
