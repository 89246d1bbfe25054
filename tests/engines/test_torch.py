"""The torch engine beyond the shared suite: output mapping, declarations, threads, loaders."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from server.engines import LoadOptions
from server.engines.torch import TorchEngine
from server.errors import EngineError, ModelLoadError
from server.model_config import TensorSpec
from tests import engine_models
from tests.engine_models import TORCH_EXPORT, TORCHSCRIPT


def spec(name: str, datatype: str = "FP32", shape: tuple[int, ...] = (-1, 4)) -> TensorSpec:
    return TensorSpec(name=name, datatype=datatype, shape=shape)


def save_script(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


class ReturnsDict(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"double": x * 2, "negative": -x}


class ReturnsOne(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


class Fails(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() < 0):
            raise ValueError("negative inputs are not allowed")
        return x


X = np.arange(8, dtype=np.float32).reshape(2, 4)


def test_outputs_map_from_a_tensor_a_tuple_or_a_dict(tmp_path: Path) -> None:
    one = TorchEngine(
        LoadOptions(
            path=save_script(ReturnsOne(), tmp_path / "one.pt"),
            declared_inputs=[spec("x")],
            declared_outputs=[spec("y")],
        )
    )
    np.testing.assert_array_equal(one.run(0, {"x": X}, ["y"])["y"], X + 1)

    pair = TorchEngine(
        LoadOptions(
            path=engine_models.add_sub(TORCHSCRIPT, tmp_path / "pair"),
            declared_inputs=[spec("A"), spec("B")],
            declared_outputs=[spec("SUM"), spec("DIFF")],
        )
    )
    out = pair.run(0, {"A": X, "B": X * 3}, ["DIFF"])
    assert list(out) == ["DIFF"]
    np.testing.assert_array_equal(out["DIFF"], -2 * X)

    named = TorchEngine(
        LoadOptions(
            path=save_script(ReturnsDict(), tmp_path / "dict.pt"),
            declared_inputs=[spec("x")],
            declared_outputs=[spec("negative")],  # a subset, by key
        )
    )
    np.testing.assert_array_equal(named.run(0, {"x": X}, ["negative"])["negative"], -X)


def test_results_that_do_not_fit_the_declaration_say_how(tmp_path: Path) -> None:
    pair = engine_models.add_sub(TORCHSCRIPT, tmp_path / "pair")
    three = TorchEngine(
        LoadOptions(
            path=pair,
            declared_inputs=[spec("A"), spec("B")],
            declared_outputs=[spec("SUM"), spec("DIFF"), spec("PRODUCT")],
        )
    )
    with pytest.raises(
        EngineError,
        match=r"the model returned a tuple of 2, but model.toml declares 3 outputs \(SUM, DIFF, PRODUCT\)",
    ):
        three.run(0, {"A": X, "B": X}, ["SUM"])
    keys = TorchEngine(
        LoadOptions(
            path=save_script(ReturnsDict(), tmp_path / "dict.pt"),
            declared_inputs=[spec("x")],
            declared_outputs=[spec("half")],
        )
    )
    with pytest.raises(
        EngineError,
        match=r"without the declared output\(s\) \['half'\] \(its keys: double, negative\)",
    ):
        keys.run(0, {"x": X}, ["half"])


def test_declarations_are_required_and_strings_refused(tmp_path: Path) -> None:
    path = save_script(ReturnsOne(), tmp_path / "one.pt")
    with pytest.raises(
        ModelLoadError, match=r"the torch engine needs \[\[inputs\]\] and \[\[outputs\]\]"
    ):
        TorchEngine(LoadOptions(path=path, declared_inputs=[spec("x")]))
    with pytest.raises(
        ModelLoadError, match=r"tensor 'x' is declared BYTES, but torch has no string"
    ):
        TorchEngine(
            LoadOptions(
                path=path,
                declared_inputs=[spec("x", "BYTES")],
                declared_outputs=[spec("y")],
            )
        )


def test_a_model_error_is_an_engine_error_with_its_message(tmp_path: Path) -> None:
    engine = TorchEngine(
        LoadOptions(
            path=save_script(Fails(), tmp_path / "fails.pt"),
            declared_inputs=[spec("x")],
            declared_outputs=[spec("y")],
        )
    )
    np.testing.assert_array_equal(engine.run(0, {"x": X}, ["y"])["y"], X)
    with pytest.raises(EngineError, match=r"torch model failed: .*negative inputs are not allowed"):
        engine.run(0, {"x": -X}, ["y"])


def test_read_only_request_buffers_are_not_handed_to_torch(tmp_path: Path) -> None:
    engine = TorchEngine(
        LoadOptions(
            path=save_script(ReturnsOne(), tmp_path / "one.pt"),
            declared_inputs=[spec("x")],
            declared_outputs=[spec("y")],
        )
    )
    body = X.tobytes()
    x = np.frombuffer(body, dtype=np.float32).reshape(2, 4)  # as the binary decoder gives it
    np.testing.assert_array_equal(engine.run(0, {"x": x}, ["y"])["y"], X + 1)


def test_intra_op_threads_apply_to_the_running_thread_only(tmp_path: Path) -> None:
    path = save_script(ReturnsOne(), tmp_path / "one.pt")

    def load(threads: int) -> TorchEngine:
        return TorchEngine(
            LoadOptions(
                path=path,
                parameters={"intra_op_threads": threads},
                declared_inputs=[spec("x")],
                declared_outputs=[spec("y")],
            )
        )

    def run(engine: TorchEngine) -> None:
        engine.run(0, {"x": X}, ["y"])  # too small for a parallel op: no torch thread set-up

    one, two = load(1), load(2)
    with ThreadPoolExecutor(1) as first, ThreadPoolExecutor(1) as second:
        first.submit(run, one).result()
        second.submit(run, two).result()
        # torch initialises a thread's count on its first parallel op from the value set
        # last in the process (here: 2, by the second thread); the engine settles its own
        # thread's count before that can happen.
        assert first.submit(torch.get_num_threads).result() == 1
        assert second.submit(torch.get_num_threads).result() == 2
        first.submit(run, one).result()
        assert first.submit(torch.get_num_threads).result() == 1


def test_intra_op_threads_must_be_a_positive_integer(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"intra_op_threads = 'two': use a positive integer"):
        TorchEngine(
            LoadOptions(
                path=save_script(ReturnsOne(), tmp_path / "one.pt"),
                parameters={"intra_op_threads": "two"},
                declared_inputs=[spec("x")],
                declared_outputs=[spec("y")],
            )
        )


def test_exported_programs_report_their_signature(tmp_path: Path) -> None:
    path = engine_models.add_sub(TORCH_EXPORT, tmp_path)
    engine = TorchEngine(
        LoadOptions(
            path=path,
            declared_inputs=[spec("A"), spec("B")],
            declared_outputs=[spec("SUM"), spec("DIFF")],
        )
    )
    assert engine.inputs == [spec("A", "FP32", (-1, 4)), spec("B", "FP32", (-1, 4))]
    assert engine.outputs == [spec("SUM", "FP32", (-1, 4)), spec("DIFF", "FP32", (-1, 4))]
    with pytest.raises(
        ModelLoadError,
        match=r"the exported program takes 2 input\(s\) \(a, b\), model.toml declares 1 \(A\)",
    ):
        TorchEngine(
            LoadOptions(path=path, declared_inputs=[spec("A")], declared_outputs=[spec("SUM")])
        )


def test_exported_dict_outputs_are_named_by_their_keys(tmp_path: Path) -> None:
    program = torch.export.export(ReturnsDict(), (torch.zeros(3, 4),))
    path = tmp_path / "dict.pt2"
    torch.export.save(program, str(path))
    engine = TorchEngine(
        LoadOptions(
            path=path,
            declared_inputs=[spec("x", shape=(3, 4))],
            declared_outputs=[spec("negative", shape=(3, 4))],
        )
    )
    assert [o.name for o in engine.outputs] == ["double", "negative"]
    x = np.ones((3, 4), dtype=np.float32)
    np.testing.assert_array_equal(engine.run(0, {"x": x}, ["negative"])["negative"], -x)


def test_the_wrong_loader_for_the_suffix_says_which_suffix(tmp_path: Path) -> None:
    script = save_script(ReturnsOne(), tmp_path / "one.pt")
    misnamed = script.rename(tmp_path / "one.pt2")
    with pytest.raises(
        ModelLoadError,
        match=r"torch.export.load cannot read .*one.pt2 \(TorchScript files need the .pt suffix\)",
    ):
        TorchEngine(
            LoadOptions(path=misnamed, declared_inputs=[spec("x")], declared_outputs=[spec("y")])
        )


def test_cuda_index_beyond_the_devices_is_refused(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(
        ModelLoadError, match=r"device 'cuda:3' is not available: torch .* sees no CUDA device"
    ):
        TorchEngine(
            LoadOptions(
                path=save_script(ReturnsOne(), tmp_path / "one.pt"),
                device="cuda:3",
                declared_inputs=[spec("x")],
                declared_outputs=[spec("y")],
            )
        )
    with pytest.raises(
        ModelLoadError,
        match=r"device 'GPU' is an OpenVINO device name; the torch engine runs on cpu, cuda, cuda:N or auto",
    ):
        TorchEngine(
            LoadOptions(
                path=tmp_path / "one.pt",
                device="GPU",
                declared_inputs=[spec("x")],
                declared_outputs=[spec("y")],
            )
        )
