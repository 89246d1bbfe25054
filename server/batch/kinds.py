"""Which reader an input path names, and which writer an output: by suffix, by URL scheme,
or a folder."""

from __future__ import annotations

from pathlib import Path

from . import tables, tabular
from .inputs import Folder, JSONLines, NumpyRows, Source
from .outputs import CSVFile, JSONLinesFile, Sink
from .parquet import ParquetFolder
from .rows import BatchError, Schema

SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".npy": "npy",
}


def open_input(path: Path, schema: Schema, rows: int) -> Source:
    """The source for `path` (its kind from its suffix, or a folder), sending `rows` rows per
    request; a file that cannot feed this model is a BatchError naming both."""
    if path.is_dir():
        return Folder(path, schema, rows)
    if not path.is_file():
        raise BatchError(f"input {path}: no such file or folder")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind == "jsonl":
        return JSONLines(path)
    if kind == "npy":
        return NumpyRows(path, schema, rows)
    if kind is not None:
        return (
            tabular.CSVRows(path, schema, rows)
            if kind == "csv"
            else tabular.ParquetRows(path, schema, rows)
        )
    raise BatchError(
        f"input {path}: cannot tell its kind from the name (give a folder of images, or a "
        f"file ending in {', '.join(SUFFIXES)})"
    )


def open_output(spec: str, table: str | None, model: str) -> Sink:
    """The sink for ``--output`` (and ``--table``): its kind from the URL scheme or suffix."""
    if spec.startswith(("postgresql://", "postgres://")):
        return tables.PostgreSQLTable(*tables.split_table(spec, table, model))
    if spec.startswith("sqlite:"):
        path, name = tables.split_table(spec, table, model)
        return tables.SQLiteTable(Path(tables.sqlite_path(path)), name)
    file = Path(spec)
    suffix = file.suffix.lower()
    if suffix in (".db", ".sqlite", ".sqlite3"):
        return tables.SQLiteTable(file, tables.table_name(table, model))
    if table is not None:
        raise BatchError(f"--table {table}: only SQLite and PostgreSQL outputs have tables")
    if suffix in (".jsonl", ".ndjson"):
        return JSONLinesFile(file)
    if suffix == ".csv":
        return CSVFile(file)
    if suffix in (".parquet", ".pq"):
        return ParquetFolder(file)
    raise BatchError(
        f"--output {spec}: cannot tell its kind (a .jsonl, .csv, .db or .sqlite file, a "
        ".parquet folder, "
        "sqlite:///FILE?table=NAME or postgresql://...?table=NAME)"
    )
