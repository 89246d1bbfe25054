"""The try form's grids (server/console/grid.py) in process, over real models: which inputs
get one, what a submitted grid runs, and a cell that is not a number refused by name.

Forms are submitted the way a browser would: every field of the page's form as the page has
it (the checked radios and checkboxes only), with the cells a test changes."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests import onnx_models
from tests.console import TOML, console_app, set_up

pytestmark = pytest.mark.anyio


class FormFields(HTMLParser):
    """The fields the try page's form would send: name -> value (textarea included)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "input" and "name" in a and a.get("type") != "file":
            if a.get("type") in ("radio", "checkbox") and "checked" not in a:
                return
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "textarea":
            self._textarea = a["name"]
            self.fields[a["name"]] = ""

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self.fields[self._textarea] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea":
            self._textarea = None


def form_of(page: httpx.Response) -> dict[str, str]:
    parser = FormFields()
    parser.feed(page.text)
    return parser.fields


def models(root: Path) -> None:
    """add (A + B, A - B: FP32 [batch, 4]), grids of 2x3 INT32, 8x8 FP32 (64 values, the
    most a grid takes) and 3 BOOL, and inputs too large (65) or dynamic for one."""
    folder = root / "models"
    onnx_models.add_sub(folder / "add" / "1" / "model.onnx")
    for name, datatype, shape in [
        ("ints", "INT32", ["batch", 2, 3]),
        ("square", "FP32", ["batch", 8, 8]),
        ("flags", "BOOL", ["batch", 3]),
        ("wide", "FP32", ["batch", 65]),
        ("dynamic", "FP32", ["batch", "n"]),
    ]:
        onnx_models.identity(folder / name / "1" / "model.onnx", datatype, shape)
    for name in ["add", "ints", "square", "flags", "wide", "dynamic"]:
        (folder / name / "model.toml").write_text(TOML)


def values(answer: httpx.Response, output: str) -> str:
    found = re.search(
        rf"<code>{output}</code>.*?<p class=\"values\"><code>(.*?)</code>", answer.text, re.S
    )
    assert found, answer.text[-3000:]
    return html.unescape(found.group(1))


async def counted(client: httpx.AsyncClient, model: str) -> tuple[int, int]:
    stats = (await client.get(f"/v2/models/{model}/stats")).json()
    inference = stats["model_stats"][0]["inference_stats"]
    return inference["success"]["count"], inference["fail"]["count"]


async def test_small_numeric_inputs_get_a_grid_of_labelled_cells_and_large_ones_json_only(
    tmp_path: Path,
) -> None:
    models(tmp_path)
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        page = (await client.get("/console/models/add/try")).text
        for cell in ["A[0][0]", "A[0][3]", "B[0][3]"]:
            assert f'name="cell:{cell}" aria-label="{cell}"' in page, cell
        assert 'name="cell:A[0][4]"' not in page
        assert '<input type="radio" name="mode:A" value="grid" checked>' in page
        assert '<details class="json">' in page  # folded: the grids give every input
        fields = form_of(await client.get("/console/models/add/try"))
        assert fields["cell:A[0][2]"] == "0" and fields["mode:B"] == "grid"
        ints = (await client.get("/console/models/ints/try")).text
        table = re.search(r'<table class="cells">(.*?)</table>', ints, re.S)
        assert table and table.group(1).count("<tr>") == 2  # one row per row of [1, 2, 3]
        assert 'aria-label="INPUT0[0][1][2]"' in ints and 'step="1"' in ints
        assert 'min="-2147483648"' in ints
        square = (await client.get("/console/models/square/try")).text
        assert 'aria-label="INPUT0[0][7][7]"' in square  # 64 values: the most a grid takes
        flags = (await client.get("/console/models/flags/try")).text
        assert 'aria-label="INPUT0[0][2]" title="INPUT0[0][2]" type="checkbox"' in flags
        for large in ["wide", "dynamic"]:
            page = (await client.get(f"/console/models/{large}/try")).text
            assert 'class="cells"' not in page and "mode:INPUT0" not in page, large
            assert '<details class="json" open>' in page, large  # the JSON body, unfolded
            assert '<textarea id="body" name="body"' in page


async def test_grid_values_run_as_the_tensor_of_the_declared_shape_and_stay_in_the_form(
    tmp_path: Path,
) -> None:
    models(tmp_path)
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        form = form_of(await client.get("/console/models/add/try"))
        for i, (a, b) in enumerate([(1, 10), (2, 20), (3.5, 30), (-4, 40)]):
            form[f"cell:A[0][{i}]"], form[f"cell:B[0][{i}]"] = str(a), str(b)
        answer = await client.post("/console/models/add/try", data=form)
        assert answer.status_code == 200, answer.text[-2000:]
        assert values(answer, "SUM") == "11.0, 22.0, 33.5, 36.0"
        assert values(answer, "DIFF") == "-9.0, -18.0, -26.5, -44.0"
        again = form_of(answer)  # the previous submission's values, in the grid
        assert again["cell:A[0][2]"] == "3.5" and again["mode:A"] == "grid"
        assert await counted(client, "add") == (1, 0)

        # B from the JSON body (its example: 0.5 each), A from the grid.
        again["mode:B"] = "json"
        mixed = await client.post("/console/models/add/try", data=again)
        assert values(mixed, "SUM") == "1.5, 2.5, 4.0, -3.5"
        assert '<details class="json" open>' in mixed.text  # a JSON input: the body shown

        ints = form_of(await client.get("/console/models/ints/try"))
        for row in range(2):
            for column in range(3):
                ints[f"cell:INPUT0[0][{row}][{column}]"] = str(row * 10 + column)
        answer = await client.post("/console/models/ints/try", data=ints)
        assert "int32 [1, 2, 3]" in answer.text
        assert values(answer, "OUTPUT0") == "0, 1, 2, 10, 11, 12"

        # 64 cells (more fields than other console forms take) and a checkbox grid.
        square = form_of(await client.get("/console/models/square/try"))
        square["cell:INPUT0[0][7][7]"] = "0.25"
        answer = await client.post("/console/models/square/try", data=square)
        assert answer.status_code == 200 and values(answer, "OUTPUT0").endswith(", 0.25")
        flags = form_of(await client.get("/console/models/flags/try"))
        flags["cell:INPUT0[0][0]"] = flags["cell:INPUT0[0][2]"] = "1"  # checked
        answer = await client.post("/console/models/flags/try", data=flags)
        assert values(answer, "OUTPUT0") == "True, False, True"
        assert form_of(answer).get("cell:INPUT0[0][2]") == "1"  # still checked


async def test_a_cell_that_is_not_a_number_is_refused_by_name_and_nothing_is_counted(
    tmp_path: Path,
) -> None:
    models(tmp_path)
    async with console_app(tmp_path) as (client, _):
        await set_up(client)
        form = form_of(await client.get("/console/models/add/try"))
        cases = [
            ("add", "cell:A[0][3]", "abc", "A[0][3]: &#39;abc&#39; is not a number"),
            ("add", "cell:B[0][0]", "", "B[0][0]: &#39;&#39; is not a number"),
            ("add", "cell:B[0][1]", "inf", "B[0][1]: &#39;inf&#39; is not a finite number"),
            ("ints", "cell:INPUT0[0][1][2]", "1.5",
             "INPUT0[0][1][2]: &#39;1.5&#39; is not a whole number"),
            ("ints", "cell:INPUT0[0][0][0]", "3e9",
             "INPUT0[0][0][0]: 3000000000 does not fit INT32 (-2147483648 to 2147483647)"),
        ]  # fmt: skip
        for model, field, text, reason in cases:
            form = form_of(await client.get(f"/console/models/{model}/try"))
            form[field] = text
            refused = await client.post(f"/console/models/{model}/try", data=form)
            assert refused.status_code == 400, (field, refused.text[-2000:])
            assert f'<p class="error" role="alert">{reason}</p>' in refused.text, field
            assert f'name="{field}"' in refused.text  # the form again, to correct it
        assert await counted(client, "add") == (0, 0)
        assert await counted(client, "ints") == (0, 0)
        # The same cell with the body chosen instead: the grid is not read at all.
        form = form_of(await client.get("/console/models/add/try"))
        form["cell:A[0][3]"], form["mode:A"], form["mode:B"] = "abc", "json", "json"
        assert (await client.post("/console/models/add/try", data=form)).status_code == 200
        assert await counted(client, "add") == (1, 0)
