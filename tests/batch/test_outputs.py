"""Every output kind holds the same rows; a rerun resumes where the output stops (a torn last
line cut off, no row twice, none skipped); an output that is not this input's, or that
another run holds, is left alone. Real files, a real SQLite file, a real PostgreSQL."""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from tests.batch import cinfer_batch, identity_rows, rows_of
from tests.onnx_models import SAMPLES

KINDS = ["jsonl", "csv", "parquet", "sqlite", "sqlite-url", "postgresql"]


def rows_csv(path: Path, count: int) -> Path:
    lines = [",".join(map(str, row)) for row in identity_rows(count)]
    lines[2] = "2,two,-2"
    path.write_text("\n".join(lines) + "\n")
    return path


def target(kind: str, tmp_path: Path, postgres: str | None) -> tuple[list[str], str, str]:
    """(--output and --table arguments, what rows_of reads, the table)."""
    if kind in ("jsonl", "csv", "parquet"):
        out = str(tmp_path / f"out.{kind}")
        return ["--output", out], out, ""
    if kind == "sqlite":
        out = str(tmp_path / "out.db")
        return ["--output", out, "--table", "scores"], out, "scores"
    if kind == "sqlite-url":
        return (
            ["--output", f"sqlite:///{tmp_path}/url.db?table=nightly"],
            f"{tmp_path}/url.db",
            "nightly",
        )
    assert postgres is not None
    table = f"scores_{os.getpid()}_{len(str(tmp_path))}"
    return ["--output", f"{postgres}?table={table}"], postgres, table


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    url = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    return request.param, url


def test_every_output_kind_holds_the_same_rows_and_resumes_after_what_it_holds(
    kind: tuple[str, str | None], models: Path, tmp_path: Path
) -> None:
    name, postgres = kind
    source = rows_csv(tmp_path / "rows.csv", 30)
    reference = tmp_path / "reference.jsonl"
    cinfer_batch("identity", str(source), "-o", str(reference), "--repository", str(models))
    expected = rows_of(reference)
    assert expected[2] == {"index": 2, "error": "not a row of numbers: could not convert "
                                                "string 'two' to float32 (column 2)"}  # fmt: skip
    argv, where, table = target(name, tmp_path, postgres)
    run = ["identity", str(source), *argv, "--repository", str(models)]
    cinfer_batch(*run)
    assert rows_of(where, table) == expected

    # Keep 11 rows (and, in a file, half of the 12th: the torn line of a killed run).
    if name in ("jsonl", "csv"):
        path = Path(where)
        lines = path.read_bytes().splitlines(keepends=True)
        kept = 11 + (name == "csv")  # the header
        path.write_bytes(b"".join(lines[:kept]) + lines[kept][:7])
    elif name == "parquet":  # one part of 11 rows, and the unfinished next one of a kill
        part = Path(where) / "part-000000.parquet"
        pq.write_table(pq.read_table(part).slice(0, 11), part)
        (Path(where) / ".part-000001.parquet.tmp").write_bytes(b"PAR1 torn")
    elif name.startswith("sqlite"):
        with sqlite3.connect(where) as db:
            db.execute(f'DELETE FROM "{table}" WHERE "index" >= 11')
    else:
        with psycopg.connect(where) as db:
            db.execute(f'DELETE FROM {table} WHERE "index" >= 11')
    result = cinfer_batch(*run)
    assert "19 rows in" in result.stderr and "resumed after the 11 rows" in result.stderr
    assert rows_of(where, table) == expected
    result = cinfer_batch(*run)  # a rerun of a complete output writes nothing
    assert "0 rows in" in result.stderr and "holds all 30 rows" in result.stderr
    assert rows_of(where, table) == expected


def test_a_resumed_file_is_byte_for_byte_the_file_of_one_run(models: Path, tmp_path: Path) -> None:
    source = rows_csv(tmp_path / "rows.csv", 20)
    for suffix in ("jsonl", "csv"):
        whole, resumed = tmp_path / f"whole.{suffix}", tmp_path / f"resumed.{suffix}"
        cinfer_batch("identity", str(source), "-o", str(whole), "--repository", str(models))
        data = whole.read_bytes()
        resumed.write_bytes(data[: len(data) // 2])  # cut mid-line
        cinfer_batch("identity", str(source), "-o", str(resumed), "--repository", str(models))
        assert resumed.read_bytes() == data


def test_a_folders_rows_carry_their_file_names_and_a_changed_folder_is_refused(
    models: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(SAMPLES / "mnist", folder, ignore=shutil.ignore_patterns("1", "*.t*"))
    out = tmp_path / "digits.db"
    run = ["mnist", str(folder), "-o", str(out), "--repository", str(models)]
    cinfer_batch(*run)
    rows = rows_of(out, "mnist")  # the table is named after the model
    assert [r["file"] for r in rows] == sorted(p.name for p in folder.iterdir())
    assert [r["outputs"]["label"] for r in rows] == [[0], [3], [4], [7], [9]]
    parquet = tmp_path / "digits.parquet"
    cinfer_batch("mnist", str(folder), "-o", str(parquet), "--repository", str(models))
    assert rows_of(parquet) == rows
    with sqlite3.connect(out) as db:
        db.execute('DELETE FROM mnist WHERE "index" >= 2')
    (folder / "digit-0.png").rename(folder / "digit-z.png")  # now row 1 is digit-4.jpg
    result = cinfer_batch(*run, code=2)
    assert "its last row, 1, is 'digit-3.png', but the folder's file 1 is now 'digit-4.jpg'" in (
        result.stderr
    )


def test_an_output_that_is_not_this_inputs_is_left_alone(models: Path, tmp_path: Path) -> None:
    source = rows_csv(tmp_path / "rows.csv", 5)
    longer = tmp_path / "longer.jsonl"
    cinfer_batch("identity", str(rows_csv(tmp_path / "more.csv", 8)), "-o", str(longer),
                 "--repository", str(models))  # fmt: skip
    before = longer.read_bytes()
    result = cinfer_batch("identity", str(source), "-o", str(longer), "--repository",
                          str(models), code=2)  # fmt: skip
    assert "holds 8 rows, the input only 5" in result.stderr
    assert longer.read_bytes() == before
    other = tmp_path / "other.csv"
    other.write_text("id,score\n1,0.5\n")
    result = cinfer_batch("identity", str(source), "-o", str(other), "--repository",
                          str(models), code=2)  # fmt: skip
    assert "has the columns id,score; this run writes index,OUTPUT0,error" in result.stderr
    notes = tmp_path / "notes.jsonl"
    notes.write_text("hello\n")
    result = cinfer_batch("identity", str(source), "-o", str(notes), "--repository",
                          str(models), code=2)  # fmt: skip
    assert "holds lines that are not cinfer batch rows" in result.stderr
    result = cinfer_batch("identity", str(source), "-o", str(tmp_path / "out.xlsx"),
                          "--repository", str(models), code=2)  # fmt: skip
    assert "cannot tell its kind" in result.stderr
    folder = tmp_path / "notes.parquet"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello\n")
    result = cinfer_batch("identity", str(source), "-o", str(folder), "--repository",
                          str(models), code=2)  # fmt: skip
    assert "holds notes.txt, which is not a part cinfer batch wrote" in result.stderr
    (tmp_path / "flat.parquet").write_bytes(b"PAR1")
    result = cinfer_batch("identity", str(source), "-o", str(tmp_path / "flat.parquet"),
                          "--repository", str(models), code=2)  # fmt: skip
    assert "a Parquet output is a folder of parts, and this is a file" in result.stderr


def test_an_output_another_run_holds_is_not_touched(
    models: Path, tmp_path: Path, postgres: str
) -> None:
    source = rows_csv(tmp_path / "rows.csv", 5)
    out = tmp_path / "busy.jsonl"
    with open(out, "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a run in progress holds it
        result = cinfer_batch("identity", str(source), "-o", str(out), "--repository",
                              str(models), code=75)  # fmt: skip
    assert "is being written by another cinfer batch run" in result.stderr
    assert out.read_bytes() == b""
    (tmp_path / "busy.parquet").mkdir()
    with open(tmp_path / "busy.parquet" / ".lock", "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        cinfer_batch("identity", str(source), "-o", str(tmp_path / "busy.parquet"),
                     "--repository", str(models), code=75)  # fmt: skip
    assert [p.name for p in (tmp_path / "busy.parquet").iterdir()] == [".lock"]
    with open(tmp_path / "busy.db.scores.lock", "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        cinfer_batch("identity", str(source), "-o", str(tmp_path / "busy.db"), "--table",
                     "scores", "--repository", str(models), code=75)  # fmt: skip
    table = f"busy_{os.getpid()}"
    with psycopg.connect(postgres, autocommit=True) as db:
        db.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (f"cinfer batch {table}",))
        result = cinfer_batch("identity", str(source), "-o", postgres, "--table", table,
                              "--repository", str(models), code=75)  # fmt: skip
        assert "holds the advisory lock" in result.stderr
    cinfer_batch("identity", str(source), "-o", postgres, "--table", table,
                 "--repository", str(models))  # fmt: skip
    assert len(rows_of(postgres, table)) == 5
