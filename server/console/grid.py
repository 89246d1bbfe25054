"""The try form's grids: a small numeric input as a table of number fields, and the v2 JSON
tensor a submitted grid stands for.

An input gets a grid when its datatype is a number (BOOL included: checkboxes) and its shape
is fixed once the batch dimension is taken as 1 (the implicit one when max_batch_size > 0,
else a leading -1) and holds at most `MAX_CELLS` values. The grid has one row per row of the
last-but-one dimension (every dimension before the last, flattened) and one column per element
of the last; a 1-D tensor (or a scalar) is one row. Each cell is the form field
``cell:<input>[i][j]``, labelled ``<input>[i][j]``: the element of the tensor it holds.

The form's radio ``mode:<input>`` says where the input comes from: ``grid``, or ``json`` (the
request body's tensor of that name). A form without it (a script that posts the body alone)
is JSON throughout. The server reads the cells into the tensor of the declared shape and
datatype, and the request decoder then checks it like any other; a cell that is not a number
of the input's datatype is refused here, with the cell named. No JavaScript is involved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from ..datatypes import JSON_DECODE
from ..errors import InvalidRequest
from ..model_config import TensorSpec

MAX_CELLS = 64
"""The most values an input may hold to get a grid; larger ones are JSON only."""
FLOATS = {"FP16", "FP32", "FP64", "BF16"}
INTEGERS = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
LARGEST = {
    "FP16": float(np.finfo(np.float16).max),
    "FP32": float(np.finfo(np.float32).max),
    "BF16": float(ml_dtypes.finfo(ml_dtypes.bfloat16).max),  # type: ignore[no-untyped-call]
    "FP64": math.inf,
}
"""The largest magnitude of each float datatype: beyond it a value would be infinity."""
CHECKED = {"1", "true", "on"}
UNCHECKED = {"", "0", "false"}


@dataclass(frozen=True)
class Cell:
    """One element of a grid: its label (``INPUT0[0][3]``), its form field, what it shows."""

    label: str
    field: str
    value: str
    checked: bool


@dataclass(frozen=True)
class Grid:
    """One input's grid, as the form shows it."""

    name: str
    datatype: str
    shape: list[int]
    rows: list[list[Cell]]
    from_grid: bool
    """The radio's choice: the grid (else the JSON body) gives the input."""
    attributes: dict[str, str]
    """The cells' HTML attributes: the type, and the step and range the datatype allows."""


def grid_shape(spec: TensorSpec, batched: bool) -> list[int] | None:
    """The full shape of `spec`'s tensor when it gets a grid (batch dimension 1), else None."""
    if spec.datatype not in FLOATS | INTEGERS | {"BOOL"}:
        return None
    dims = list(spec.shape)
    if batched:
        dims = [1, *dims]
    elif dims and dims[0] == -1:
        dims[0] = 1
    if any(d < 1 for d in dims) or math.prod(dims) > MAX_CELLS:
        return None
    return dims


def _label(name: str, index: tuple[int, ...]) -> str:
    return name + "".join(f"[{i}]" for i in index)


def _attributes(datatype: str) -> dict[str, str]:
    if datatype == "BOOL":
        return {"type": "checkbox", "value": "1"}
    if datatype in INTEGERS:
        info = np.iinfo(JSON_DECODE[datatype])
        return {"type": "number", "step": "1", "min": str(info.min), "max": str(info.max)}
    return {"type": "number", "step": "any"}


def grids(
    inputs: tuple[TensorSpec, ...], batched: bool, form: Mapping[str, Any] | None
) -> list[Grid]:
    """The grids of the inputs that get one, showing `form`'s values (a submitted form), or
    zeros and the grid chosen (a fresh one)."""
    found = []
    for spec in inputs:
        shape = grid_shape(spec, batched)
        if shape is None:
            continue
        width = shape[-1] if shape else 1
        cells = []
        for index in np.ndindex(*shape):
            label = _label(spec.name, index)
            field = "cell:" + label
            value = "0" if form is None else str(form.get(field, "0"))
            cells.append(Cell(label, field, value, value.strip().lower() in CHECKED))
        rows = [cells[i : i + width] for i in range(0, len(cells), width)]
        chosen = True if form is None else form.get(f"mode:{spec.name}") == "grid"
        found.append(
            Grid(spec.name, spec.datatype, shape, rows, chosen, _attributes(spec.datatype))
        )
    return found


def grid_tensors(
    inputs: tuple[TensorSpec, ...], batched: bool, form: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The v2 JSON tensors of the inputs whose grid the form chose, by name; 400 naming the
    first cell that is not a number of its input's datatype."""
    tensors = {}
    for spec in inputs:
        shape = grid_shape(spec, batched)
        if shape is None or form.get(f"mode:{spec.name}") != "grid":
            continue
        # At most MAX_CELLS values a form: one Python step each is nothing to vectorise.
        data = []
        for index in np.ndindex(*shape):
            label = _label(spec.name, index)
            data.append(cell_value(label, spec.datatype, form.get("cell:" + label)))
        tensors[spec.name] = {
            "name": spec.name, "datatype": spec.datatype, "shape": shape, "data": data,
        }  # fmt: skip
    return tensors


def cell_value(label: str, datatype: str, text: Any) -> bool | int | float:
    """The value a cell's text stands for, in `datatype`; 400 naming the cell when it is none.
    A checkbox left unchecked is not sent: None is False for BOOL (and not a number else)."""
    shown = "" if text is None else str(text)
    typed = shown.strip()
    if datatype == "BOOL":
        if typed.lower() in CHECKED:
            return True
        if typed.lower() in UNCHECKED:
            return False
        raise InvalidRequest(f"{label}: {shown!r} is not a boolean (0 or 1)")
    try:
        number = float(typed)
    except ValueError:
        raise InvalidRequest(f"{label}: {shown!r} is not a number") from None
    if not math.isfinite(number):  # JSON has no NaN nor infinity
        raise InvalidRequest(f"{label}: {shown!r} is not a finite number")
    if datatype in INTEGERS:
        try:
            whole = int(typed)  # exact, where a float would round a large INT64
        except ValueError:
            if not number.is_integer():
                raise InvalidRequest(f"{label}: {shown!r} is not a whole number") from None
            whole = int(number)
        info = np.iinfo(JSON_DECODE[datatype])
        if not info.min <= whole <= info.max:
            raise InvalidRequest(
                f"{label}: {whole} does not fit {datatype} ({info.min} to {info.max})"
            )
        return whole
    if abs(number) > LARGEST[datatype]:
        raise InvalidRequest(
            f"{label}: {shown!r} does not fit {datatype} (at most {LARGEST[datatype]:g} either way)"
        )
    return number
