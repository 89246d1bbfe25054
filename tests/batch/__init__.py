"""`cinfer batch` run for real: the command in this process (click's runner) or as a
subprocess, over real model files, files and databases; and reading its outputs back."""

from __future__ import annotations

import csv
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from click.testing import CliRunner, Result

from server.cli import main
from tests.live import ROOT

Row = dict[str, Any]


def cinfer_batch(*argv: str, code: int = 0) -> Result:
    """`cinfer batch ARGV` in this process; its exit code must be `code`."""
    runner = CliRunner(env={name: None for name in os.environ if name.startswith("CINFER_")})
    result = runner.invoke(main, ["batch", *argv])
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


def lines(path: Path) -> int:
    """Whole lines in a file (0 when there is none yet)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`cinfer batch ARGV` as a process of its own, its output in `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CINFER_")}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's server, whatever the virtualenv points at
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "server", "batch", *argv], stdout=out, stderr=out, env=env
        )


def identity_rows(count: int) -> np.ndarray:
    """Rows the identity models answer with themselves: row i is [i, i + 0.5, -i]."""
    i = np.arange(count, dtype=np.float32)[:, None]
    return np.hstack([i, i + 0.5, -i]).astype(np.float32)


def rows_of(output: str | Path, table: str = "") -> list[Row]:
    """The rows an output holds, in order, each as {"index", ["file"], "outputs": {name:
    data}} or {"index", ["file"], "error"}: the same for every output kind."""
    text = str(output)
    if text.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(text) as db:
            found = db.execute(
                f'SELECT "index", "file", "outputs"::text, "error" FROM {table} ORDER BY "index"'
            ).fetchall()
        return [_table_row(*row) for row in found]
    path = Path(text)
    if path.suffix == ".db":
        with sqlite3.connect(path) as db:
            found = db.execute(
                f'SELECT "index", "file", "outputs", "error" FROM "{table}" ORDER BY "index"'
            ).fetchall()
        return [_table_row(*row) for row in found]
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(path)  # the folder's parts as one table
        singles = {f.name for f in table.schema if f.type == pa.list_(pa.float32())}
        return [_parquet_row(row, singles) for row in table.to_pylist()]
    if path.suffix == ".csv":
        with open(path, newline="") as file:
            return [_csv_row(row) for row in csv.DictReader(file)]
    rows = []
    for line in path.read_bytes().splitlines():
        row = orjson.loads(line)
        rows.append(_row(row["index"], row.get("file"), row.get("outputs"), row.get("error")))
    return rows


def _row(index: int, file: str | None, outputs: Any, error: str | None) -> Row:
    row: Row = {"index": index}
    if file is not None:
        row["file"] = file
    if outputs is None:
        row["error"] = error
    else:
        row["outputs"] = {o["name"]: o["data"] for o in outputs}
    return row


def _table_row(index: int, file: str | None, outputs: str | None, error: str | None) -> Row:
    return _row(index, file, orjson.loads(outputs) if outputs is not None else None, error)


def _csv_row(cells: dict[str, str]) -> Row:
    row: Row = {"index": int(cells.pop("index"))}
    if "file" in cells:
        row["file"] = cells.pop("file")
    error = cells.pop("error")
    if error:
        row["error"] = error
        return row
    outputs = {}
    for name, cell in cells.items():
        try:
            value = orjson.loads(cell)
        except orjson.JSONDecodeError:
            value = cell  # one string, as it is
        outputs[name] = value if isinstance(value, list) else [value]
    row["outputs"] = outputs
    return row


def _parquet_row(cells: dict[str, Any], singles: set[str]) -> Row:
    """As the other kinds' rows: float32 values as JSON writes them (their shortest form)."""
    row: Row = {"index": cells.pop("index")}
    if "file" in cells:
        row["file"] = cells.pop("file")
    error = cells.pop("error")
    if error is not None:
        row["error"] = error
        return row
    row["outputs"] = {
        name: [
            v.decode()
            if isinstance(v, bytes)
            else float(str(np.float32(v)))
            if name in singles
            else v
            for v in values
        ]
        for name, values in cells.items()
    }
    return row
