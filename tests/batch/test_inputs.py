"""Every input kind, run in this process over real models: rows in input order, each with
its index, and the rows that cannot be run reported in place while the rest go on."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from tests.batch import cinfer_batch, identity_rows, rows_of
from tests.onnx_models import SAMPLES


def answered(row: dict, values: np.ndarray) -> None:
    assert "error" not in row, row
    assert row["outputs"] == {"OUTPUT0": values.tolist()}, row


def test_csv_rows_come_back_in_order_and_bad_lines_are_error_rows_in_place(
    models: Path, tmp_path: Path
) -> None:
    values = identity_rows(10)
    lines = ["a,b,c", *(",".join(map(str, row)) for row in values)]
    lines[3 + 1] = "3,x,-3"  # data row 3: not a number
    lines[6 + 1] = "6,6.5"  # data row 6: two values
    lines[8 + 1] = ""  # data row 8: blank
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    result = cinfer_batch("identity", str(tmp_path / "rows.csv"), "--output", str(out),
                          "--repository", str(models))  # fmt: skip
    rows = rows_of(out)
    assert [row["index"] for row in rows] == list(range(10))
    errors = {row["index"]: row["error"] for row in rows if "error" in row}
    assert errors == {
        3: "not a row of numbers: could not convert string 'x' to float32 (column 2)",
        6: "2 values; input 'INPUT0' takes 3 per row (shape [3])",
        8: "an empty line is not a row",
    }
    for row in rows:
        if row["index"] not in errors:
            answered(row, values[row["index"]])
    assert "10 rows in" in result.stderr and "error rows: 3" in result.stderr
    assert f"done: {out} holds all 10 rows" in result.stderr


def test_numpy_and_parquet_rows_are_cast_to_the_input_and_read_in_order(
    models: Path, tmp_path: Path
) -> None:
    values = identity_rows(11)
    np.save(tmp_path / "rows.npy", values.astype(np.float64))  # float64 feeds FP32
    out = tmp_path / "npy.jsonl"
    cinfer_batch("identity", str(tmp_path / "rows.npy"), "--output", str(out),
                 "--repository", str(models))  # fmt: skip
    rows = rows_of(out)
    assert [r["index"] for r in rows] == list(range(11))
    for row, expected in zip(rows, values, strict=True):
        answered(row, expected)

    columns = {name: values[:, i].tolist() for i, name in enumerate("abc")}
    columns["b"][4] = None
    pq.write_table(pa.table(columns), tmp_path / "columns.parquet", row_group_size=3)
    listed = [row.tolist() for row in values]
    listed[2], listed[9] = [1.0], None
    pq.write_table(pa.table({"v": listed}), tmp_path / "list.parquet", row_group_size=4)
    for name, bad in (
        ("columns", {4: "a null in column 'b'"}),
        ("list", {2: "1 values in column 'v'; input 'INPUT0' takes 3 per row (shape [3])",
                  9: "a null in column 'v'"}),
    ):  # fmt: skip
        out = tmp_path / f"{name}.jsonl"
        cinfer_batch("identity", str(tmp_path / f"{name}.parquet"), "--output", str(out),
                     "--repository", str(models))  # fmt: skip
        rows = rows_of(out)
        assert [r["index"] for r in rows] == list(range(11))
        assert {r["index"]: r["error"] for r in rows if "error" in r} == bad
        for row in rows:
            if row["index"] not in bad:
                answered(row, values[row["index"]])


def test_jsonl_lines_are_requests_answered_in_order_with_the_refused_ones_in_place(
    models: Path, tmp_path: Path
) -> None:
    def request(rows: np.ndarray, **extra: object) -> bytes:
        tensor = {"name": "INPUT0", "datatype": "FP32", "shape": list(rows.shape),
                  "data": rows.ravel().tolist()}  # fmt: skip
        return orjson.dumps({"inputs": [tensor], **extra})

    values = identity_rows(6)
    lines = [
        request(values[0:2], id="first"),  # two rows: one output row, shape [2, 3]
        b'{"inputs": [',
        request(values[2:3, :2]),
        b"",
        request(values[5:6]),
    ]
    (tmp_path / "requests.jsonl").write_bytes(b"\n".join(lines))  # no newline at the end
    out = tmp_path / "out.csv"
    cinfer_batch("identity", str(tmp_path / "requests.jsonl"), "--output", str(out),
                 "--repository", str(models))  # fmt: skip
    rows = rows_of(out)
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["outputs"] == {"OUTPUT0": values[0:2].ravel().tolist()}
    assert rows[1]["error"].startswith("malformed JSON in the inference request")
    assert rows[2]["error"] == "input 'INPUT0': shape [1, 2] does not fit the model's [-1, 3]"
    assert rows[3]["error"] == "an empty line is not a request"
    assert rows[4]["outputs"] == {"OUTPUT0": values[5].tolist()}
    # JSONL is how a model with several inputs is run; the id comes back as a response's.
    out = tmp_path / "add_sub.jsonl"
    a = {"name": "A", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}
    b = {"name": "B", "datatype": "FP32", "shape": [1, 2], "data": [10, 20]}
    (tmp_path / "two.jsonl").write_bytes(orjson.dumps({"id": "x", "inputs": [a, b]}) + b"\n")
    cinfer_batch("add_sub", str(tmp_path / "two.jsonl"), "-o", str(out),
                 "--repository", str(models))  # fmt: skip
    line = orjson.loads(out.read_bytes())
    assert line["id"] == "x" and line["model_name"] == "add_sub"
    assert {o["name"]: o["data"] for o in line["outputs"]} == {"SUM": [11, 22], "DIFF": [-9, -18]}
    # A request that asks for one output: into Parquet, the other one's column is null.
    only = {"inputs": [a, b], "outputs": [{"name": "DIFF"}]}
    (tmp_path / "one.jsonl").write_bytes(
        orjson.dumps(only) + b"\n" + orjson.dumps({"inputs": [a, b]})
    )
    parquet = tmp_path / "add_sub.parquet"
    cinfer_batch("add_sub", str(tmp_path / "one.jsonl"), "-o", str(parquet),
                 "--repository", str(models))  # fmt: skip
    assert pq.read_table(parquet).select(["SUM", "DIFF"]).to_pylist() == [
        {"SUM": None, "DIFF": [-9, -18]},
        {"SUM": [11, 22], "DIFF": [-9, -18]},
    ]


def test_a_folder_of_images_is_run_in_name_order_and_a_broken_file_is_its_row(
    models: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in sorted(SAMPLES.glob("mnist/digit-*")):
        shutil.copy(image, folder / image.name)
    (folder / "digit-5.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / ".hidden.png").write_bytes(b"left out")
    out = tmp_path / "digits.csv"
    cinfer_batch("mnist", str(folder), "--output", str(out), "--classification", "1",
                 "--repository", str(models))  # fmt: skip
    rows = rows_of(out)
    names = ["digit-0.png", "digit-3.png", "digit-4.jpg", "digit-5.png", "digit-7.jpg",
             "digit-9.png"]  # fmt: skip
    assert [(r["index"], r["file"]) for r in rows] == list(enumerate(names))
    labels = {r["file"]: r["outputs"]["probabilities"][0].split(":", 1)[1] for r in rows
              if "outputs" in r}  # fmt: skip
    assert labels == {"digit-0.png": "0:zero", "digit-3.png": "3:three",
                      "digit-4.jpg": "4:four", "digit-7.jpg": "7:seven",
                      "digit-9.png": "9:nine"}  # fmt: skip
    assert "cannot be read" in rows[3]["error"] or "damaged or truncated" in rows[3]["error"]
    parquet = tmp_path / "digits.parquet"  # labels as binary, the error in place
    cinfer_batch("mnist", str(folder), "--output", str(parquet), "--classification", "1",
                 "--repository", str(models))  # fmt: skip
    assert rows_of(parquet) == rows


def test_a_model_without_a_batch_dim_takes_each_row_as_a_whole_request(
    models: Path, tmp_path: Path
) -> None:
    values = identity_rows(3)
    (tmp_path / "rows.csv").write_text("\n".join(",".join(map(str, r)) for r in values))
    out = tmp_path / "out.jsonl"
    cinfer_batch("whole", str(tmp_path / "rows.csv"), "-o", str(out), "--repository", str(models))
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [line["outputs"][0]["shape"] for line in lines] == [[3], [3], [3]]
    assert [line["outputs"][0]["data"] for line in lines] == values.tolist()


def test_an_input_that_cannot_feed_the_model_is_refused_before_any_row_runs(
    models: Path, tmp_path: Path
) -> None:
    (tmp_path / "rows.csv").write_text("1,2\n")
    np.save(tmp_path / "wide.npy", np.zeros((4, 5), np.float32))
    (tmp_path / "rows.txt").write_text("1,2,3\n")
    cases = [
        ("add_sub", "rows.csv", "CSV rows feed a model with one input; model 'add_sub' takes 2 "
                                "(A, B): write its requests as JSONL instead"),
        ("identity", "wide.npy", "an array of shape [4, 5], so rows of [5]; input 'INPUT0' "
                                 "takes rows of [3]"),
        ("identity", "rows.txt", "cannot tell its kind from the name"),
        ("identity", ".", "a folder's files feed an image (BYTES) input; input 'INPUT0' of "
                          "model 'identity' is FP32"),
    ]  # fmt: skip
    for model, name, message in cases:
        out = tmp_path / "never.jsonl"
        result = cinfer_batch(model, str(tmp_path / name), "-o", str(out),
                              "--repository", str(models), code=2)  # fmt: skip
        assert message in result.stderr, result.stderr
        assert not out.exists()
    result = cinfer_batch("nothing", str(tmp_path / "rows.csv"), "-o", str(tmp_path / "x.jsonl"),
                          "--repository", str(models), code=3)  # fmt: skip
    assert "no folder for model 'nothing' in the repository" in result.stderr


def test_instances_gives_the_run_engine_instances_of_its_own_and_the_same_rows(
    models: Path, tmp_path: Path
) -> None:
    np.save(tmp_path / "rows.npy", identity_rows(50))
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    said = cinfer_batch("identity", str(tmp_path / "rows.npy"), "-o", str(one), "--repository",
                        str(models)).stderr  # fmt: skip
    assert "model identity version 1 in this process: 1 engine instance on cpu" in said
    said = cinfer_batch("identity", str(tmp_path / "rows.npy"), "-o", str(two), "--repository",
                        str(models), "--instances", "2").stderr  # fmt: skip
    assert "model identity version 1 in this process: 2 engine instances on cpu" in said
    assert rows_of(two) == rows_of(one)
    assert [row["outputs"]["OUTPUT0"] for row in rows_of(two)] == identity_rows(50).tolist()
    refused = cinfer_batch("identity", str(tmp_path / "rows.npy"), "-o", str(tmp_path / "x.csv"),
                           "--url", "http://127.0.0.1:9", "--instances", "2", code=2)  # fmt: skip
    assert "--instances is for runs in this process" in refused.output
