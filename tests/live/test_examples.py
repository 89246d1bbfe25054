"""Every example in README.md and docs/*.md runs as written, against a real server.

The fenced ``sh``, ``console`` and ``python`` blocks of each file run in order, as a reader
would paste them into one shell: in a project folder of their own that holds the shipped
config.toml (API tokens on, ``data/cinfer.db``) and the sample models, with a live server over
it, and with the variables a shell block sets carried to the blocks after it (to Python only
the exported ones, as a shell would). ``localhost:8000`` and ``127.0.0.1:8000`` become the live
server's address, and ``.venv/bin/`` the folder of the interpreter running the tests.

A block that cannot run here is marked in the Markdown, on the line above its fence, with
``<!-- example: skip (why) -->``: the skip and its reason show in the test report. Quoted output
is checked: a ``json`` or ``text`` block right after a block is what it prints, and so are the
lines of a ``console`` block that do not start with ``$``. ``<!-- example: shape (why) -->``
compares keys and types only, for answers whose values are the reader's own. Tokens and token
ids are compared by their form.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests import onnx_models
from tests.live import ROOT, live_server, server_log, wait_until

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
RUNNABLE = {"sh", "bash", "shell", "console", "python"}
OUTPUTS = {"json", "text"}
FENCE = re.compile(r"^( {0,3})```(\S*)\s*$")
MARKER = re.compile(r"^\s*<!-- example: (skip|shape) \((.+)\) -->\s*$")
ADDRESS = re.compile(r"\b(?:localhost|127\.0\.0\.1):8000\b")
ASSIGNED = re.compile(r"^\s*(?:export\s+)?([A-Za-z_]\w*)=", re.MULTILINE)
END = "@@ end of an example command @@"


@dataclass
class Block:
    """One fenced block of a Markdown file."""

    path: Path
    line: int
    """1-based line of the opening fence."""
    lang: str
    code: str
    marker: tuple[str, str] | None
    """("skip" | "shape", why) from the comment above the fence."""
    output: Block | None = None
    """The ``json``/``text`` block right after this one: what it prints."""
    last: int = field(default=0, repr=False)
    """0-based index of the closing fence."""

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent = match.group(1)
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        code = "".join(line.removeprefix(indent) + "\n" for line in lines[i + 1 : end])
        above = i - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        marked = MARKER.match(lines[above]) if above >= 0 else None
        marker = (marked.group(1), marked.group(2)) if marked else None
        block = Block(path, i + 1, match.group(2), code, marker, last=end)
        previous = found[-1] if found else None
        if (
            block.lang in OUTPUTS
            and previous is not None
            and previous.lang in RUNNABLE
            and previous.last == above
        ):
            previous.output = block
        found.append(block)
        i = end + 1
    return found


def examples() -> list[Block]:
    return [b for path in DOCUMENTS for b in blocks(path) if b.lang in RUNNABLE]


def console_commands(code: str) -> list[tuple[str, str]]:
    """A console block as (command, the output shown after it) pairs."""
    pairs: list[tuple[str, list[str]]] = []
    continued = False
    for line in code.splitlines():
        if continued:
            pairs[-1] = (pairs[-1][0] + "\n" + line, pairs[-1][1])
        elif line.startswith("$ "):
            pairs.append((line[2:], []))
        else:
            assert pairs, f"output before any command: {line!r}"
            pairs[-1][1].append(line)
        continued = line.endswith("\\")
    return [(command, "\n".join(shown)) for command, shown in pairs]


def normalised(text: str) -> list[str]:
    """The lines of `text` with tokens and token ids reduced to their form."""
    text = re.sub(r"\bcinfer_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}", "cinfer_<id>_<secret>", text)
    text = re.sub(r"\b[0-9a-f]{12}\b", "<id>", text)
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def same(actual: Any, expected: Any, shape: bool, where: str = "answer") -> None:
    """`actual` is `expected`: equal (floats within 1e-4), or of the same shape."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        assert set(actual) == set(expected), f"{where}: keys {sorted(actual)}"
        for key, value in expected.items():
            same(actual[key], value, shape, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: {actual!r} is not a list"
        if shape:
            assert bool(actual) == bool(expected), f"{where}: {actual!r}"
            for i, item in enumerate(actual):
                same(item, expected[0], shape, f"{where}[{i}]")
        else:
            assert len(actual) == len(expected), f"{where}: {actual!r}"
            for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
                same(a, e, shape, f"{where}[{i}]")
    elif isinstance(expected, float) and not isinstance(actual, bool):
        assert isinstance(actual, int | float), f"{where}: {actual!r}"
        assert shape or math.isclose(actual, expected, rel_tol=1e-4, abs_tol=1e-6), (
            f"{where}: {actual!r}, the example says {expected!r}"
        )
    elif shape:
        assert type(actual) is type(expected), f"{where}: {actual!r}"
    else:
        assert actual == expected, f"{where}: {actual!r}, the example says {expected!r}"


def check_output(printed: str, shown: str, shape: bool, where: str) -> None:
    """What a command printed against what its example shows."""
    try:
        expected = json.loads(shown)
    except ValueError:
        assert normalised(printed) == normalised(shown), (
            f"{where} printed:\n{printed}\nthe example shows:\n{shown}"
        )
        return
    lines = printed.splitlines()
    for start in range(len(lines)):  # the answer, after any messages on stderr
        try:
            actual = json.loads("\n".join(lines[start:]))
        except ValueError:
            continue
        same(actual, expected, shape, where)
        return
    raise AssertionError(f"{where} printed no JSON:\n{printed}")


class Session:
    """One Markdown file's examples, as one reader's shell session in one project folder."""

    def __init__(self, path: Path, folder: Path, stack: contextlib.ExitStack) -> None:
        self.path = path
        self.project = folder / "project"
        self.project.mkdir(parents=True)
        shutil.copy(ROOT / "config.toml", self.project / "config.toml")
        onnx_models.copy_samples(self.project / "repository")
        # The image sample too: docs/images.md sends its example files.
        shutil.copytree(onnx_models.SAMPLES / "mnist", self.project / "repository" / "mnist")
        if path.name == "engines.md":  # docs/engines.md asks the sklearn sample
            shutil.copytree(
                onnx_models.SAMPLES / "iris_sklearn", self.project / "repository" / "iris_sklearn"
            )
        self._stack = stack
        self._url: str | None = None
        self.variables: dict[str, tuple[str, bool]] = {}
        """Shell variables set so far: name -> (value, exported)."""
        self._failures: dict[int, Exception | None] = {}
        """Blocks run so far (by line) -> what failed in each, if anything."""

    @property
    def url(self) -> str:
        if self._url is None:
            self._url, _ = self._stack.enter_context(
                live_server(
                    self.project / "repository",
                    "--config",
                    str(self.project / "config.toml"),
                    # As the shipped config.toml has them (live_server turns both off).
                    env={"CINFER_AUTH__ENABLED": "true", "CINFER_JOBS__ENABLED": "true"},
                )
            )
        return self._url

    def run(self, block: Block) -> None:
        """Run `block`, the blocks before it first (once each), and check what it prints."""
        for earlier in blocks(self.path):
            if earlier.line > block.line:
                break
            skipped = earlier.marker is not None and earlier.marker[0] == "skip"
            if earlier.lang in RUNNABLE and not skipped and earlier.line not in self._failures:
                try:
                    self._run(earlier)
                except Exception as exc:
                    self._failures[earlier.line] = exc
                else:
                    self._failures[earlier.line] = None
        failure = self._failures[block.line]
        if failure is not None:
            raise failure

    def _run(self, block: Block) -> None:
        code = ADDRESS.sub(self.url.removeprefix("http://"), block.code)
        code = code.replace(".venv/bin/", f"{BIN}/")
        shape = block.marker is not None and block.marker[0] == "shape"
        if "/admin/usage" in code:
            self._wait_for_usage()
        if block.lang == "python":
            printed = self._python(block, code)
            if block.output is not None:
                check_output(printed, block.output.code, shape, block.id)
            return
        if block.lang == "console":
            commands = console_commands(code)
        else:
            commands = [(code, block.output.code if block.output else "")]
        outputs = self._shell(block, [command for command, _ in commands])
        for (command, shown), printed in zip(commands, outputs, strict=True):
            if shown.strip():
                check_output(printed, shown, shape, f"{block.id} `{command.splitlines()[0]}`")

    def _environment(self, exported_only: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CINFER_")}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        for name, (value, exported) in self.variables.items():
            if exported or not exported_only:
                env[name] = value
        return env

    def _shell(self, block: Block, commands: list[str]) -> list[str]:
        state = self.project / "variables"
        names = sorted({name for c in commands for name in ASSIGNED.findall(c)})
        script = ["set -eo pipefail"]
        for command in commands:
            script += [command, f"printf '\\n%s\\n' '{END}'"]
        script += [
            f"for name in {' '.join(names)}; do",
            '  if [ -n "${!name+set}" ]; then',
            '    printf "%s\\0%s\\0%s\\0" "$name" "${!name}" "$(declare -p "$name" | cut -c1-10)"',
            "  fi",
            f"done > {state}",
        ]
        result = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=self.project,
            env=self._environment(exported_only=False),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, self._failure(block, result.stdout)
        fields = state.read_text().split("\0")[:-1]
        for name, value, declared in zip(fields[::3], fields[1::3], fields[2::3], strict=True):
            self.variables[name] = (value, declared.startswith("declare -x"))
        chunks = result.stdout.split(f"\n{END}\n")
        assert len(chunks) == len(commands) + 1, self._failure(block, result.stdout)
        return [chunk.strip("\n") for chunk in chunks[:-1]]

    def _python(self, block: Block, code: str) -> str:
        script = self.project / "example.py"
        script.write_text(code)
        result = subprocess.run(
            [sys.executable, str(script)],
            cwd=self.project,
            env=self._environment(exported_only=True),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, self._failure(block, result.stdout)
        return result.stdout

    def _wait_for_usage(self) -> None:
        # The server writes the usage log every half second; a reader asks later than that.
        admin = self.variables.get("ADMIN", ("", False))[0]

        def written() -> bool:
            answer = httpx.get(
                f"{self.url}/admin/usage", headers={"Authorization": f"Bearer {admin}"}
            )
            return answer.status_code == 200 and bool(answer.json()["usage"])

        wait_until(written, "the usage log to be written")

    def _failure(self, block: Block, printed: str) -> str:
        log = server_log(self.project / "repository") if self._url else ""
        return f"{block.id} failed:\n{printed}\n--- server log ---\n{log[-4000:]}"


class Sessions:
    def __init__(self, factory: pytest.TempPathFactory, stack: contextlib.ExitStack) -> None:
        self._factory = factory
        self._stack = stack
        self._sessions: dict[Path, Session] = {}

    def of(self, path: Path) -> Session:
        if path not in self._sessions:
            folder = self._factory.mktemp(path.stem)
            self._sessions[path] = Session(path, folder, self._stack)
        return self._sessions[path]


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sessions]:
    with contextlib.ExitStack() as stack:
        yield Sessions(tmp_path_factory, stack)


@pytest.mark.parametrize("block", examples(), ids=lambda b: b.id)
def test_example_runs_as_written(block: Block, sessions: Sessions) -> None:
    if block.marker is not None and block.marker[0] == "skip":
        pytest.skip(f"{block.id}: {block.marker[1]}")
    sessions.of(block.path).run(block)


def test_every_marker_is_on_an_example() -> None:
    for path in DOCUMENTS:
        found = {b.line: b for b in blocks(path)}
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if "<!-- example:" in line:
                assert MARKER.match(line), f"{path.name}:{number}: malformed marker {line!r}"
                after = next(n for n in range(number, len(lines)) if lines[n].strip()) + 1
                block = found.get(after)
                assert block is not None, f"{path.name}:{number}: no fence after the marker"
                kind = MARKER.match(line).group(1)  # type: ignore[union-attr]
                assert block.lang in RUNNABLE or kind == "shape", f"{path.name}:{number}"


# -- quoted server output -----------------------------------------------------------------


def quoted(path: Path, heading: str) -> list[str]:
    """The lines of the first untagged block (quoted output) under `heading` in `path`."""
    text = path.read_text()
    after = text.index(f"\n{heading}\n")
    block = next(b for b in blocks(path) if not b.lang and text.count("\n", 0, after) < b.line)
    return block.code.splitlines()


def log_pattern(line: str) -> re.Pattern[str]:
    """A quoted log line as a pattern for the server's log: durations, the place of the
    repository and what the quote elides with '...' may differ."""
    regex = ""
    for part in re.split(r"(\.\.\.|\b\d+\.\d+s\b|\brepository/)", line):
        if part == "...":
            regex += ".*"
        elif re.fullmatch(r"\d+\.\d+s", part):
            regex += r"\d+\.\d\ds"
        elif part == "repository/":
            regex += r"\S*repository/"
        else:
            regex += re.escape(part)
    return re.compile(f": {regex}$", re.MULTILINE)


def int32_digits(path: Path) -> Path:
    """A digits-like model whose `image` input is INT32 (the samples declare FP32)."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["pixels", "weights"], ["probabilities"]),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=1),
        ],
        "digits_int32",
        [helper.make_tensor_value_info("image", TensorProto.INT32, ["batch", 64])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch", 1]),
        ],
        [numpy_helper.from_array(np.zeros((64, 10), np.float32), "weights")],
    )
    return onnx_models._save(graph, path)


def test_the_repository_logs_and_reasons_are_what_the_server_prints(tmp_path: Path) -> None:
    """docs/repository.md "Logs" and "When a load fails", replayed on a real server."""
    doc = ROOT / "docs" / "repository.md"
    lines = quoted(doc, "## Logs")
    root = tmp_path / "repository"
    onnx_models.copy_samples(root)
    with live_server(root, env={"CINFER_REPOSITORY__SETTLE_MS": "100"}) as (url, _):

        def logged(line: str) -> None:
            pattern = log_pattern(line)
            wait_until(lambda: pattern.search(server_log(root)), f"the log line {line!r}")

        digits, iris = root / "digits", root / "iris"
        shutil.copytree(digits / "1", digits / ".2.tmp")
        (digits / ".2.tmp").rename(digits / "2")  # version 2 replaces 1
        for line in lines[:4]:
            logged(line)
        toml = (digits / "model.toml").read_text()
        (digits / "model.toml").write_text(toml.replace("instances = 1", "instances = 2"))
        logged(lines[4])
        (iris / "1" / "model.onnx").write_bytes(b"not an ONNX file")
        logged(lines[5])
        toml = (iris / "model.toml").read_text().splitlines()
        assert toml[2] == "max_batch_size = 0"
        toml[2] = 'max_batch_size = "eight"'  # line 3, as the doc has it
        (iris / "model.toml").write_text("\n".join(toml) + "\n")
        logged(lines[6])
        int32_digits(digits / "3" / "model.onnx")
        logged("model digits version 3: LOADING -> UNAVAILABLE in 0.01s: input 'image': ...")
        index = httpx.post(f"{url}/v2/repository/index").json()
    reasons = json.loads(next(b.code for b in blocks(doc) if b.lang == "json"))
    for quote in reasons:
        # The doc's broken digits is version 2; here 2 serves (the log above) and 3 is broken.
        pattern = log_pattern(quote["reason"]).pattern.removeprefix(": ")
        assert any(
            entry["name"] == quote["name"]
            and entry["state"] == quote["state"]
            and re.match(pattern, entry["reason"])
            for entry in index
        ), (quote, index)


def test_the_access_log_line_is_what_the_server_prints(tmp_path: Path) -> None:
    (line,) = quoted(ROOT / "docs" / "metrics.md", "## Access log")
    root = tmp_path / "repository"
    onnx_models.copy_samples(root)
    with live_server(root, env={"CINFER_SERVER__ACCESS_LOG": "text"}) as (url, _):
        body = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                            "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip
        headers = {"X-Request-ID": "abc-123"}
        assert httpx.post(f"{url}/v2/models/iris/infer", json=body, headers=headers).is_success
        regex = re.escape(line)
        regex = re.sub(r"latency_ms=[\d.\\]+", r"latency_ms=\\d+\\.?\\d*", regex)
        regex = re.sub(r"client=127\\\.0\\\.0\\\.1:\d+", r"client=127\\.0\\.0\\.1:\\d+", regex)
        pattern = re.compile(f": {regex}$", re.MULTILINE)
        wait_until(lambda: pattern.search(server_log(root)), f"the access log line {line!r}")
