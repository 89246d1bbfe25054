"""One suite, every engine: the same models served as ONNX (onnxruntime), OpenVINO IR
(openvino), TorchScript and torch.export (torch), through the real HTTP path.

The `device` parameter runs the functional tests on the CPU and, marked `gpu`, on the GPU
each engine can use (CUDA for onnxruntime and torch, OpenVINO's GPU); they are skipped with
the reason when there is none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
import torch

from server.dataplane import PLATFORMS
from server.datatypes import NUMPY
from tests import engine_models, onnx_models
from tests.conftest import running_app
from tests.engine_models import FORMATS, OPENVINO, Format
from tests.onnx_models import SAMPLES

pytestmark = pytest.mark.anyio

ADD_SUB_IO = (
    [("A", "FP32", [4]), ("B", "FP32", [4])],
    [("SUM", "FP32", [4]), ("DIFF", "FP32", [4])],
)


def engine_gpu(engine: str) -> tuple[str, str | None]:
    """(the device name for the engine's GPU, why it cannot use one here or None)."""
    if engine == "openvino":
        devices = ov.Core().available_devices
        if any(d.startswith("GPU") for d in devices):
            return "GPU", None
        return "GPU", f"OpenVINO runs on Intel GPUs and sees none (devices: {devices})"
    if engine == "torch":
        if torch.cuda.is_available():
            return "cuda", None
        return "cuda", f"torch {torch.__version__} sees no CUDA device"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return "cuda", None
    return "cuda", f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (cinfer[gpu])"


@pytest.fixture(params=FORMATS, ids=[f.id for f in FORMATS])
def fmt(request: pytest.FixtureRequest) -> Format:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request: pytest.FixtureRequest, fmt: Format) -> str:
    if request.param == "cpu":
        return "cpu"
    name, missing = engine_gpu(fmt.engine)
    if missing:
        pytest.skip(missing)
    return name


def binary_request(
    tensors: dict[str, np.ndarray], datatypes: dict[str, str], outputs: list[str]
) -> tuple[bytes, dict[str, str]]:
    """A v2 infer body with binary inputs that asks for binary outputs."""
    entries, blobs = [], []
    for name, array in tensors.items():
        if datatypes[name] == "BYTES":
            blob = b"".join(struct.pack("<I", len(v)) + v for v in array.ravel())
        else:
            blob = np.ascontiguousarray(array).tobytes()
        entries.append(
            {
                "name": name,
                "datatype": datatypes[name],
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    header = json.dumps(
        {
            "inputs": entries,
            "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
        }
    ).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + b"".join(blobs), headers


def binary_outputs(content: bytes, header_length: int) -> dict[str, tuple[str, np.ndarray]]:
    header = json.loads(content[:header_length])
    offset = header_length
    found = {}
    for out in header["outputs"]:
        size = out["parameters"]["binary_data_size"]
        blob = content[offset : offset + size]
        offset += size
        datatype, shape = out["datatype"], out["shape"]
        if datatype == "BYTES":
            values, pos = [], 0
            while pos < len(blob):
                (length,) = struct.unpack_from("<I", blob, pos)
                values.append(blob[pos + 4 : pos + 4 + length])
                pos += 4 + length
            array = np.array(values, dtype=object).reshape(shape)
        else:
            array = np.frombuffer(blob, dtype=NUMPY[datatype]).reshape(shape)
        found[out["name"]] = (datatype, array)
    return found


async def infer_binary(
    client: Any,
    model: str,
    tensors: dict[str, np.ndarray],
    datatypes: dict[str, str],
    outputs: list[str],
) -> dict[str, tuple[str, np.ndarray]]:
    body, headers = binary_request(tensors, datatypes, outputs)
    response = await client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    return binary_outputs(
        response.content, int(response.headers["inference-header-content-length"])
    )


def add_sub_folder(
    repo: Path, name: str, fmt: Format, declare: bool = True, **settings: object
) -> Path:
    folder = repo / name
    engine_models.add_sub(fmt, folder / "1")
    inputs, outputs = ADD_SUB_IO if declare else (None, None)
    (folder / "model.toml").write_text(engine_models.toml(fmt, inputs, outputs, **settings))
    return folder


async def reason(client: Any, model: str) -> str:
    index = (await client.post("/v2/repository/index")).json()
    entries = [e for e in index if e["name"] == model]
    assert entries and entries[0]["state"] == "UNAVAILABLE", index
    return str(entries[0]["reason"])


# -- metadata, schema --------------------------------------------------------------------


async def test_metadata_config_and_infer_over_http(repo: Path, fmt: Format, device: str) -> None:
    add_sub_folder(repo, "m", fmt, max_batch_size=8, instances=2, device=device)
    async with running_app(repo) as (client, _):
        meta = (await client.get("/v2/models/m")).json()
        assert meta["state"] == "READY", meta
        assert meta["platform"] == PLATFORMS[fmt.engine][0]
        assert meta["inputs"] == [
            {"name": "A", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "B", "datatype": "FP32", "shape": [-1, 4]},
        ]
        assert [o["name"] for o in meta["outputs"]] == ["SUM", "DIFF"]
        config = (await client.get("/v2/models/m/config")).json()
        assert config["backend"] == PLATFORMS[fmt.engine][1]
        assert config["max_batch_size"] == 8
        assert [i["dims"] for i in config["input"]] == [[4], [4]]
        group = config["instance_group"][0]
        assert group["count"] == 2
        assert group["kind"] == ("KIND_CPU" if device == "cpu" else "KIND_GPU")
        a = [[1.0, 2.0, 3.0, 4.0], [0.5, 0.25, -1.0, 8.0]]
        b = [[4.0, 3.0, 2.0, 1.0], [0.5, 0.75, 1.0, -8.0]]
        body = {
            "inputs": [
                {"name": "A", "datatype": "FP32", "shape": [2, 4], "data": a},
                {"name": "B", "datatype": "FP32", "shape": [2, 4], "data": b},
            ]
        }
        response = await client.post("/v2/models/m/infer", json=body)
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        assert outputs["SUM"]["shape"] == [2, 4]
        assert outputs["SUM"]["data"] == (np.array(a) + np.array(b)).ravel().tolist()
        assert outputs["DIFF"]["data"] == (np.array(a) - np.array(b)).ravel().tolist()


async def test_schema_is_derived_from_the_file_or_must_be_declared(repo: Path, fmt: Format) -> None:
    add_sub_folder(repo, "m", fmt, declare=False, max_batch_size=8)
    async with running_app(repo) as (client, _):
        if fmt.needs_declaration:
            assert (
                "the torch engine needs [[inputs]] and [[outputs]] in model.toml"
                in await reason(client, "m")
            )
            return
        meta = (await client.get("/v2/models/m")).json()
        assert meta["inputs"] == [
            {"name": "A", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "B", "datatype": "FP32", "shape": [-1, 4]},
        ]
        assert meta["outputs"] == [
            {"name": "SUM", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "DIFF", "datatype": "FP32", "shape": [-1, 4]},
        ]


WRONG_DATATYPE = {
    "onnxruntime": "input 'A': declared datatype FP64, model file has FP32",
    "openvino": "input 'A': declared datatype FP64, model file has FP32",
    "torch.export": "input 'A': declared datatype FP64, model file has FP32",
    # A TorchScript file has no signature: the warm-up run finds the wrong declaration.
    "torchscript": "output 'SUM': the model returned torch.float64, model.toml declares FP32",
}
WRONG_SHAPE = {
    "onnxruntime": r"input 'A': declared shape [-1, 5] but the model file has [-1, 4]",
    "openvino": r"input 'A': declared shape [-1, 5] but the model file has [-1, 4]",
    "torch.export": r"input 'A': declared shape [-1, 5] but the model file has [-1, 4]",
    "torchscript": "output 'SUM': the model returned shape [1, 5], model.toml declares [-1, 4]",
}


async def test_a_wrong_declaration_is_refused_naming_the_tensor(repo: Path, fmt: Format) -> None:
    inputs, outputs = ADD_SUB_IO
    engine_models.add_sub(fmt, repo / "dtype" / "1")
    wrong_type = [("A", "FP64", [4]), inputs[1]]
    (repo / "dtype" / "model.toml").write_text(
        engine_models.toml(fmt, wrong_type, outputs, max_batch_size=8)
    )
    engine_models.add_sub(fmt, repo / "shape" / "1")
    wrong_shape = [("A", "FP32", [5]), ("B", "FP32", [5])]
    (repo / "shape" / "model.toml").write_text(
        engine_models.toml(fmt, wrong_shape, outputs, max_batch_size=8)
    )
    async with running_app(repo) as (client, _):
        assert WRONG_DATATYPE[fmt.id] in await reason(client, "dtype")
        assert WRONG_SHAPE[fmt.id] in await reason(client, "shape")


CORRUPT = {
    "onnxruntime": "onnxruntime cannot load {path}",
    "openvino": "OpenVINO cannot read {path}",
    "torchscript": "{path} is not a PyTorch archive",
    "torch.export": "{path} is not a PyTorch archive",
}


async def test_a_corrupt_file_is_unavailable_naming_the_file(repo: Path, fmt: Format) -> None:
    folder = add_sub_folder(repo, "m", fmt, max_batch_size=8)
    path = folder / "1" / fmt.file
    path.write_bytes(b"\x00not a model\xff" * 64)
    async with running_app(repo) as (client, _):
        assert CORRUPT[fmt.id].format(path=path) in await reason(client, "m")
        x = {"datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}
        body = {"inputs": [{"name": "A", **x}, {"name": "B", **x}]}
        response = await client.post("/v2/models/m/infer", json=body)
        assert response.status_code == 503
        assert str(path) in response.json()["error"]


async def test_openvino_ir_without_its_weights_names_the_missing_file(repo: Path) -> None:
    folder = add_sub_folder(repo, "m", OPENVINO, max_batch_size=8)
    (folder / "1" / "model.bin").unlink()
    async with running_app(repo) as (client, _):
        assert f"missing weights file {folder / '1' / 'model.bin'}" in await reason(client, "m")


async def test_openvino_ir_with_truncated_weights_is_refused(repo: Path, tmp_path: Path) -> None:
    weights = repo / "m" / "1" / "model.bin"
    weights.parent.mkdir(parents=True)
    dense = onnx_models.dense(tmp_path / "dense.onnx", width=64)
    ov.save_model(ov.convert_model(dense), weights.with_suffix(".xml"), compress_to_fp16=False)
    weights.write_bytes(weights.read_bytes()[:100])
    (repo / "m" / "model.toml").write_text('engine = "openvino"\n')
    async with running_app(repo) as (client, _):
        text = await reason(client, "m")
    assert text.startswith(
        f"OpenVINO cannot compile {weights.with_suffix('.xml')}"
    ) or text.startswith(f"OpenVINO cannot read {weights.with_suffix('.xml')}"), text
    assert "Incorrect weights in bin file" in text


async def test_unknown_parameters_are_refused_with_the_known_ones(repo: Path, fmt: Format) -> None:
    add_sub_folder(repo, "m", fmt, max_batch_size=8, parameters={"bogus": 1})
    async with running_app(repo) as (client, _):
        text = await reason(client, "m")
        assert f"unknown {fmt.engine} parameter(s) ['bogus'] (known: [" in text


# -- running -----------------------------------------------------------------------------


async def test_batches_form_under_load_and_split_back(repo: Path, fmt: Format, device: str) -> None:
    add_sub_folder(
        repo,
        "m",
        fmt,
        max_batch_size=8,
        device=device,
        batching={"max_queue_delay_us": 2_000_000, "preferred_batch_sizes": [8]},
    )
    rng = np.random.default_rng(0)
    rows = [3, 1, 2, 2]
    requests = [
        {n: rng.standard_normal((r, 4)).astype(np.float32) for n in ("A", "B")} for r in rows
    ]
    types = {"A": "FP32", "B": "FP32"}
    async with running_app(repo) as (client, dataplane):
        results = await asyncio.gather(
            *(infer_binary(client, "m", t, types, ["SUM", "DIFF"]) for t in requests)
        )
        pool = dataplane.version("m", None).pool
        assert pool is not None
        sizes = {size: b.count for s in pool.stats for size, b in s.batches.items()}
    assert sizes == {8: 1}, "the four requests should run as one batch of 8 rows"
    for tensors, result in zip(requests, results):
        np.testing.assert_allclose(result["SUM"][1], tensors["A"] + tensors["B"], rtol=1e-6)
        np.testing.assert_allclose(result["DIFF"][1], tensors["A"] - tensors["B"], rtol=1e-6)


def datatypes_of(fmt: Format) -> list[str]:
    """Every KServe datatype the engine serves (torch has no strings; OpenVINO's are in
    test_openvino.py, its CPU plugin cannot pass them through an Identity)."""
    return [d for d in NUMPY if d != "BYTES" or fmt.engine == "onnxruntime"]


async def test_every_datatype_round_trips_exactly(repo: Path, fmt: Format, device: str) -> None:
    datatypes = datatypes_of(fmt)
    for datatype in datatypes:
        name = f"id_{datatype.lower()}"
        engine_models.identity(fmt, repo / name / "1", datatype, [-1, 3])
        io = [("INPUT0", datatype, [3])], [("OUTPUT0", datatype, [3])]
        (repo / name / "model.toml").write_text(
            engine_models.toml(fmt, *io, max_batch_size=4, device=device)
        )
    async with running_app(repo) as (client, _):
        index = (await client.post("/v2/repository/index")).json()
        assert [e["state"] for e in index] == ["READY"] * len(datatypes), index
        for datatype in datatypes:
            sent = engine_models.extremes(datatype, (2, 3))
            if fmt is OPENVINO and datatype == "INT64":
                # OpenVINO's CPU plugin computes INT64 in 32 bits (docs/engines.md).
                sent = engine_models.extremes("INT32", (2, 3)).astype(np.int64)
            result = await infer_binary(
                client,
                f"id_{datatype.lower()}",
                {"INPUT0": sent},
                {"INPUT0": datatype},
                ["OUTPUT0"],
            )
            got_type, got = result["OUTPUT0"]
            assert got_type == datatype
            assert got.shape == sent.shape
            if datatype == "BYTES":
                assert got.tolist() == sent.tolist()
            else:  # bit for bit: -0.0, the type's limits, bf16 carried as bf16
                assert got.tobytes() == sent.tobytes(), f"{datatype}: {sent} -> {got}"


async def test_variable_dims_take_any_size(repo: Path, fmt: Format, device: str) -> None:
    engine_models.identity(fmt, repo / "m" / "1", "FP32", [-1, -1])
    io = [("INPUT0", "FP32", [-1, -1])], [("OUTPUT0", "FP32", [-1, -1])]
    (repo / "m" / "model.toml").write_text(engine_models.toml(fmt, *io, device=device))
    async with running_app(repo) as (client, _):
        meta = (await client.get("/v2/models/m")).json()
        assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, -1]}]
        for shape in [(2, 3), (1, 7), (5, 1), (4, 4)]:
            x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
            result = await infer_binary(client, "m", {"INPUT0": x}, {"INPUT0": "FP32"}, ["OUTPUT0"])
            np.testing.assert_array_equal(result["OUTPUT0"][1], x)


FAILED_RUN = {
    "onnxruntime": (500, "onnxruntime failed: "),
    "openvino": (500, "OpenVINO failed: "),
    "torchscript": (500, "torch model failed: RuntimeError: The size of tensor a (2) must match"),
    "torch.export": (500, "torch model failed: "),
}


async def test_a_failing_run_answers_with_the_engine_message_not_a_traceback(
    repo: Path, fmt: Format, caplog: pytest.LogCaptureFixture
) -> None:
    engine_models.add_sub(fmt, repo / "m" / "1")
    inputs = [("A", "FP32", [-1, 4]), ("B", "FP32", [-1, 4])]
    outputs = [("SUM", "FP32", [-1, 4]), ("DIFF", "FP32", [-1, 4])]
    (repo / "m" / "model.toml").write_text(engine_models.toml(fmt, inputs, outputs))
    # Rows that do not broadcast: 2 + 3. The server cannot know; the engine refuses.
    body = {
        "inputs": [
            {"name": "A", "datatype": "FP32", "shape": [2, 4], "data": [0.0] * 8},
            {"name": "B", "datatype": "FP32", "shape": [3, 4], "data": [0.0] * 12},
        ]
    }
    async with running_app(repo) as (client, _):
        with caplog.at_level(logging.ERROR, logger="cinfer"):
            response = await client.post("/v2/models/m/infer", json=body)
    status, message = FAILED_RUN[fmt.id]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error.startswith(message), error
    assert "Traceback" not in error and 'File "' not in error
    assert "inference failed" in caplog.text  # the log has the traceback


# -- devices -----------------------------------------------------------------------------

NO_CUDA = {
    "onnxruntime": r"device 'cuda' is not available: onnxruntime {} has no CUDAExecutionProvider (it has ",
    "openvino": r"device 'cuda' is not available to OpenVINO, which runs on Intel CPUs, GPUs and NPUs, not CUDA (OpenVINO {} sees: ",
    "torch": r"device 'cuda' is not available: torch {} ",
}


async def test_cuda_that_is_not_there_is_unavailable_with_the_reason(
    repo: Path, fmt: Format
) -> None:
    if engine_gpu(fmt.engine)[1] is None:
        pytest.skip("this machine has a GPU the engine can use")
    add_sub_folder(repo, "m", fmt, max_batch_size=8, device="cuda")
    version = {
        "onnxruntime": ort.__version__,
        "openvino": ov.__version__,
        "torch": torch.__version__,
    }
    async with running_app(repo) as (client, _):
        text = await reason(client, "m")
        assert NO_CUDA[fmt.engine].format(version[fmt.engine]) in text
        meta = (await client.get("/v2/models/m")).json()
        assert meta["state"] == "UNAVAILABLE" and meta["reason"] == text


async def test_auto_device_falls_back_to_cpu_and_logs_it(
    repo: Path, fmt: Format, caplog: pytest.LogCaptureFixture
) -> None:
    if engine_gpu(fmt.engine)[1] is None:
        pytest.skip("this machine has a GPU the engine can use")
    add_sub_folder(repo, "m", fmt, max_batch_size=8, device="auto")
    with caplog.at_level(logging.INFO, logger="cinfer"):
        async with running_app(repo) as (client, _):
            config = (await client.get("/v2/models/m/config")).json()
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert 'device = "auto"' in caplog.text and "running on CPU" in caplog.text


# -- the shared sample -------------------------------------------------------------------


async def test_the_digits_sample_gives_the_same_answer_on_every_engine(repo: Path) -> None:
    samples = ["digits", "digits_openvino", "digits_torch"]
    for name in samples:
        shutil.copytree(SAMPLES / name, repo / name)
    # 8x8 images of pixel intensities 0..16, as the model was trained on.
    images = np.random.default_rng(0).integers(0, 17, (256, 64)).astype(np.float32)
    answers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    async with running_app(repo) as (client, _):
        for name in samples:
            parts = [
                await infer_binary(
                    client,
                    name,
                    {"image": images[i : i + 32]},
                    {"image": "FP32"},
                    ["probabilities", "label"],
                )
                for i in range(0, len(images), 32)
            ]
            answers[name] = (
                np.concatenate([p["probabilities"][1] for p in parts]),
                np.concatenate([p["label"][1] for p in parts]),
            )
    probabilities, labels = answers["digits"]
    assert probabilities.shape == (256, 10) and labels.shape == (256, 1)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    for name in samples[1:]:
        # 1e-5 relative, and 1e-6 absolute for the small probabilities: this model's logits
        # reach ~190, where float32's spacing is 1.5e-5, so two correct float32 evaluations
        # (different GEMM summation orders; onnxruntime itself is 4.6e-5 off the float64
        # logits) differ by a few 1e-5 in a logit, which exp() makes the same relative
        # difference in every probability below the top one: measured up to 2.3e-5 relative
        # at p ~ 0.01, i.e. ~2e-7 absolute.
        np.testing.assert_allclose(answers[name][0], probabilities, rtol=1e-5, atol=1e-6)
        top = probabilities > 0.5
        np.testing.assert_allclose(answers[name][0][top], probabilities[top], rtol=1e-5)
        np.testing.assert_array_equal(answers[name][1], labels)
