"""The python engine against real worker processes: answers, checks of every answer, failures
of model code, dead and hung workers, and workers under another interpreter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from server.engines import LoadOptions
from server.engines.python import PredictFailed, PredictRaised, PythonEngine, WorkerDied
from server.errors import ModelLoadError
from server.model_config import TensorSpec
from tests.live import wait_until

X = TensorSpec(name="X", datatype="FP32", shape=(-1, 16))
Y = TensorSpec(name="Y", datatype="FP32", shape=(-1, 16))

AFFINE = """
import numpy as np

class Affine:
    def __init__(self, folder, parameters):
        self.a = parameters.get("a", 2.0)

    def predict(self, inputs):
        return {"Y": (self.a * inputs["X"] + 1).astype(np.float32)}
"""


def write_model(tmp_path: Path, source: str, name: str = "m") -> Path:
    folder = tmp_path / name / "1"
    folder.mkdir(parents=True)
    path = folder / "model.py"
    path.write_text(textwrap.dedent(source))
    return path


def engine(
    path: Path,
    inputs: tuple[TensorSpec, ...] = (X,),
    outputs: tuple[TensorSpec, ...] = (Y,),
    **options: object,
) -> PythonEngine:
    return PythonEngine(
        LoadOptions(path=path, declared_inputs=inputs, declared_outputs=outputs, **options)  # type: ignore[arg-type]
    )


def test_predict_gets_the_batch_and_parameters_and_answers(tmp_path: Path) -> None:
    loaded = engine(write_model(tmp_path, AFFINE), parameters={"a": 3.0})
    try:
        x = np.arange(32, dtype=np.float32).reshape(2, 16)
        np.testing.assert_array_equal(loaded.run(0, {"X": x}, ["Y"])["Y"], 3 * x + 1)
        # Larger than the first segments: both sides replace theirs, then shrink back fine.
        big = np.random.default_rng(0).random((40_000, 16), dtype=np.float32)
        np.testing.assert_allclose(loaded.run(0, {"X": big}, ["Y"])["Y"], 3 * big + 1)
        np.testing.assert_array_equal(loaded.run(0, {"X": x[:1]}, ["Y"])["Y"], 3 * x[:1] + 1)
    finally:
        loaded.close()


def test_bytes_tensors_cross_both_ways(tmp_path: Path) -> None:
    source = """
    import numpy as np

    class Upper:
        def __init__(self, folder, parameters):
            pass

        def predict(self, inputs):
            words = inputs["TEXT"]
            out = np.array([w.upper() for w in words.ravel()], dtype=object).reshape(words.shape)
            lengths = np.array([len(w) for w in words.ravel()], np.int64).reshape(words.shape)
            return {"UPPER": out, "LENGTH": lengths}
    """
    text = TensorSpec(name="TEXT", datatype="BYTES", shape=(-1, 1))
    upper = TensorSpec(name="UPPER", datatype="BYTES", shape=(-1, 1))
    length = TensorSpec(name="LENGTH", datatype="INT64", shape=(-1, 1))
    loaded = engine(write_model(tmp_path, source), (text,), (upper, length))
    try:
        words = np.array([[b"abc"], [b""], ["zé".encode()]], dtype=object)
        result = loaded.run(0, {"TEXT": words}, ["UPPER", "LENGTH"])
        assert result["UPPER"].tolist() == [[b"ABC"], [b""], ["Zé".encode()]]
        assert result["LENGTH"].tolist() == [[3], [0], [3]]
    finally:
        loaded.close()


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (
            '{"Y": inputs["X"].astype(np.float64)}',
            "returned output 'Y' as float64; model.toml declares FP32",
        ),
        (
            '{"Y": inputs["X"][:, :3]}',
            "returned output 'Y' with shape [2, 3]; model.toml declares [-1, 16]",
        ),
        (
            '{"Y": inputs["X"][:1]}',
            "with shape [1, 16]; model.toml declares [-1, 16] (2 rows in this batch)",
        ),
        ('{"Z": inputs["X"]}', "predict returned no output 'Y' (it returned: Z)"),
        ('{"Y": [1.0]}', "output 'Y': predict returned list, not a numpy array"),
        ("inputs", "predict returned no output 'Y' (it returned: X)"),
        ('[inputs["X"]]', "predict returned list; it must return a dict"),
    ],
)
def test_every_answer_is_checked_against_the_declared_outputs(
    tmp_path: Path, returned: str, message: str
) -> None:
    source = f"""
    import numpy as np

    class Bad:
        def __init__(self, folder, parameters):
            pass

        def predict(self, inputs):
            return {returned}
    """
    loaded = engine(write_model(tmp_path, source))
    try:
        x = np.ones((2, 16), np.float32)
        with pytest.raises(PredictFailed) as caught:
            loaded.run(0, {"X": x}, ["Y"])
        assert "m:1" in str(caught.value)
        assert message in str(caught.value)
        assert not isinstance(caught.value, PredictRaised)  # a bad answer, not an exception
    finally:
        loaded.close()


def test_an_exception_in_predict_names_its_message_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = """
    import numpy as np

    class Picky:
        def __init__(self, folder, parameters):
            pass

        def predict(self, inputs):
            if inputs["X"].sum() > 0:
                raise ValueError("no positive values, please")
            return {"Y": inputs["X"]}
    """
    loaded = engine(write_model(tmp_path, source))
    try:
        with pytest.raises(PredictRaised) as caught:
            loaded.run(0, {"X": np.ones((1, 16), np.float32)}, ["Y"])
        assert str(caught.value) == (
            "model m:1: predict raised ValueError: no positive values, please (model.py, line 10)"
        )
        assert caught.value.status_code == 500
        # The traceback is in the server log, from the model's own frame on.
        logged = caplog.text
        assert 'model.py", line 10, in predict' in logged and "pyworker.py" not in logged
        zeros = np.zeros((1, 16), np.float32)
        np.testing.assert_array_equal(loaded.run(0, {"X": zeros}, ["Y"])["Y"], zeros)
    finally:
        loaded.close()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = 1\n", "model.py must define exactly one class with a predict method (found: none)"),
        (
            "class A:\n    def predict(self, i): pass\nclass B:\n    def predict(self, i): pass\n",
            "model.py must define exactly one class with a predict method (found: A, B)",
        ),
        ("def broken(:\n", "model.py failed to load: SyntaxError"),
        (
            "class A:\n    def __init__(self, folder, parameters):\n        raise OSError('no weights')\n"
            "    def predict(self, inputs): pass\n",
            "model.py failed to load: OSError: no weights (model.py, line 3)",
        ),
        (
            "import not_a_module_anywhere\n",
            "ModuleNotFoundError: No module named 'not_a_module_anywhere'",
        ),
    ],
)
def test_a_model_that_does_not_load_says_why(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(ModelLoadError) as caught:
        engine(write_model(tmp_path, source))
    assert message in str(caught.value)


def test_a_module_beside_model_py_imports(tmp_path: Path) -> None:
    path = write_model(
        tmp_path,
        "from helper import offset\n\nclass M:\n    def __init__(self, folder, parameters):\n"
        "        self.folder = folder\n    def predict(self, inputs):\n"
        "        return {'Y': inputs['X'] + offset}\n",
    )
    (path.parent / "helper.py").write_text("offset = 5\n")
    loaded = engine(path)
    try:
        result = loaded.run(0, {"X": np.zeros((1, 16), np.float32)}, ["Y"])
        assert result["Y"].tolist() == [[5.0] * 16]
    finally:
        loaded.close()


PID = """
import os
import numpy as np

class Pid:
    def __init__(self, folder, parameters):
        pass

    def predict(self, inputs):
        x = inputs["X"]
        if x[0, 0] == 1:
            os.kill(os.getpid(), 9)
        if x[0, 0] >= 2:
            import time
            if x[0, 0] == 3:
                open(os.path.join(os.path.dirname(__file__), "hung"), "w").close()
            time.sleep(60)
        return {"Y": np.full(x.shape, os.getpid(), np.float32)}
"""


def test_a_worker_killed_mid_request_fails_that_request_and_comes_back(tmp_path: Path) -> None:
    loaded = engine(write_model(tmp_path, PID), instances=2)
    reasons: list[str] = []
    loaded.on_reason = reasons.append
    try:
        zeros = np.zeros((1, 16), np.float32)
        before = {int(loaded.run(i, {"X": zeros}, ["Y"])["Y"][0, 0]) for i in (0, 1)}
        assert len(before) == 2 and os.getpid() not in before  # one process per instance
        killer = zeros.copy()
        killer[0, 0] = 1
        with pytest.raises(WorkerDied) as caught:
            loaded.run(1, {"X": killer}, ["Y"])
        assert str(caught.value) == (
            "model m:1: the worker of instance 1 was killed by SIGKILL while running this request"
        )
        # Instance 0 never noticed; instance 1 is restarted and answers again.
        assert int(loaded.run(0, {"X": zeros}, ["Y"])["Y"][0, 0]) in before
        after = int(loaded.run(1, {"X": zeros}, ["Y"])["Y"][0, 0])
        assert after not in before
        assert reasons[0] == (
            "model m:1: the worker of instance 1 was killed by SIGKILL; restarting it"
        )
        assert reasons[-1] == ""
    finally:
        loaded.close()


def test_a_hung_predict_is_killed_after_timeout_s(tmp_path: Path) -> None:
    loaded = engine(write_model(tmp_path, PID), timeout_s=0.5)
    try:
        hang = np.zeros((1, 16), np.float32)
        hang[0, 0] = 2
        with pytest.raises(WorkerDied, match=r"was killed after 0.5 s without an answer"):
            loaded.run(0, {"X": hang}, ["Y"])
        zeros = np.zeros((1, 16), np.float32)
        assert loaded.run(0, {"X": zeros}, ["Y"])["Y"].shape == (1, 16)
    finally:
        loaded.close()


def test_close_stops_every_worker_and_calls_close(tmp_path: Path) -> None:
    marker = tmp_path / "closed"
    source = f"""
    import os
    import numpy as np

    class M:
        def __init__(self, folder, parameters):
            pass

        def predict(self, inputs):
            return {{"Y": np.full(inputs["X"].shape, os.getpid(), np.float32)}}

        def close(self):
            with open({str(marker)!r}, "a") as f:
                f.write(str(os.getpid()) + "\\n")
    """
    loaded = engine(write_model(tmp_path, source), instances=2)
    zeros = np.zeros((1, 16), np.float32)
    pids = {int(loaded.run(i, {"X": zeros}, ["Y"])["Y"][0, 0]) for i in (0, 1)}
    loaded.resize(1)
    loaded.close()
    assert {int(p) for p in marker.read_text().split()} == pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def venv(where: Path, with_numpy: bool) -> Path:
    """A virtual environment of its own, with a module only it has; numpy (which the worker
    needs) comes from the server's site-packages through a .pth file when asked for."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "only_in_this_env.py").write_text("NAME = 'nlp'\n")
    if with_numpy:
        numpy_home = Path(np.__file__).parent.parent
        Path(site, "server_numpy.pth").write_text(f"{numpy_home}\n")
    return python


def test_a_model_runs_under_the_interpreter_it_names(tmp_path: Path) -> None:
    python = venv(tmp_path / "env", with_numpy=True)
    source = """
    import sys
    import numpy as np
    import only_in_this_env

    class M:
        def __init__(self, folder, parameters):
            pass

        def predict(self, inputs):
            prefix = np.array([sys.prefix.encode(), only_in_this_env.NAME.encode()], dtype=object)
            return {"WHERE": prefix.reshape(1, 2).repeat(len(inputs["X"]), axis=0)}
    """
    where = TensorSpec(name="WHERE", datatype="BYTES", shape=(-1, 2))
    loaded = engine(write_model(tmp_path, source), outputs=(where,), python=str(python))
    try:
        result = loaded.run(0, {"X": np.zeros((1, 16), np.float32)}, ["WHERE"])
        assert result["WHERE"].tolist() == [[str(tmp_path / "env").encode(), b"nlp"]]
    finally:
        loaded.close()


def test_an_interpreter_without_numpy_or_missing_is_a_load_error(tmp_path: Path) -> None:
    python = venv(tmp_path / "bare", with_numpy=False)
    path = write_model(tmp_path, AFFINE)
    with pytest.raises(ModelLoadError, match=r"No module named 'numpy' \(the worker needs numpy\)"):
        engine(path, python=str(python))
    with pytest.raises(ModelLoadError, match=r"python = '/nowhere/python': no executable file"):
        engine(path, python="/nowhere/python")


def test_a_worker_in_a_hung_predict_exits_when_the_server_dies(tmp_path: Path) -> None:
    """The server is SIGKILLed while its worker sleeps in predict: the worker exits too."""
    path = write_model(tmp_path, PID)
    script = "\n".join(
        [
            "import os, sys, numpy as np",
            f"sys.path.insert(0, {str(Path(__file__).parents[2])!r})",
            "from pathlib import Path",
            "from server.engines import LoadOptions",
            "from server.engines.python import PythonEngine",
            "from server.model_config import TensorSpec",
            "x = TensorSpec(name='X', datatype='FP32', shape=(-1, 16))",
            "y = TensorSpec(name='Y', datatype='FP32', shape=(-1, 16))",
            f"options = LoadOptions(path=Path({str(path)!r}), declared_inputs=[x],"
            " declared_outputs=[y])",
            "e = PythonEngine(options)",
            "answer = e.run(0, {'X': np.zeros((1, 16), np.float32)}, ['Y'])",
            "print(int(answer['Y'][0, 0]), flush=True)",
            # A predict that never ends: the worker never reads the socket's end-of-file.
            "import threading, time",
            "hang = {'X': np.full((1, 16), 3, np.float32)}",
            "threading.Thread(target=e.run, args=(0, hang, ['Y']), daemon=True).start()",
            f"hung = Path({str(path.parent / 'hung')!r})",
            "while not hung.exists(): time.sleep(0.01)",
            "os.kill(os.getpid(), 9)",
        ]
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL
    pid = int(done.stdout.split()[0])

    def gone() -> bool:
        try:  # a zombie waits for init to reap it: it has stopped running
            return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    wait_until(gone, f"worker {pid} to exit after the server process died")
