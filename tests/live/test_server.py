"""The real server (uvicorn on a free port) driven by the real tritonclient.http client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import onnx_models
from tests.live import live_server

DATATYPES = [
    "BOOL",
    "UINT8",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("live") / "models"
    root.mkdir()
    onnx_models.copy_samples(root)
    onnx_models.identity_models(root, DATATYPES)
    with live_server(root) as (url, _):
        yield url.removeprefix("http://"), root


@pytest.fixture
def client(server: tuple[str, Path]) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(url=server[0], concurrency=8)
    yield c
    c.close()


def session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(onnx_models.SAMPLES / name / "1" / "model.onnx"))


def test_health_metadata_and_config(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "cinfer" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("digits")
    assert model["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 64]}]
    config = client.get_model_config("digits")
    assert config["max_batch_size"] == 32 and config["input"][0]["data_type"] == "TYPE_FP32"
    assert "dynamic_batching" in config
    index = client.get_model_repository_index()
    assert {"name": "iris", "version": "1", "state": "READY", "reason": ""} in index


@pytest.mark.parametrize("binary", [False, True])
def test_digits_match_onnxruntime(client: httpclient.InferenceServerClient, binary: bool) -> None:
    images = np.random.default_rng(7).integers(0, 17, (5, 64)).astype(np.float32)
    image = httpclient.InferInput("image", [5, 64], "FP32")
    image.set_data_from_numpy(images, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
        httpclient.InferRequestedOutput("label", binary_data=binary),
    ]
    result = client.infer("digits", [image], outputs=outputs, request_id="r-42")
    expected_probabilities, expected_labels = session("digits").run(None, {"image": images})
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected_probabilities, rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), expected_labels)
    assert result.get_response()["id"] == "r-42"
    assert result.get_response()["model_version"] == "1"


@pytest.mark.parametrize("binary", [False, True])
def test_iris_requested_output_subset(
    client: httpclient.InferenceServerClient, binary: bool
) -> None:
    flowers = np.array(
        [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], np.float32
    )
    features = httpclient.InferInput("features", [3, 4], "FP32")
    features.set_data_from_numpy(flowers, binary_data=binary)
    result = client.infer(
        "iris", [features], outputs=[httpclient.InferRequestedOutput("class", binary_data=binary)]
    )
    assert result.as_numpy("probabilities") is None
    assert result.as_numpy("class").ravel().tolist() == [0, 2, 1]
    np.testing.assert_array_equal(
        result.as_numpy("class"), session("iris").run(["class"], {"features": flowers})[0]
    )


def values(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array(
            [[b"a", "é".encode(), b""], [b"xyz", b"\x00\x01", b"long" * 20]], dtype=object
        )
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BF16":
        return np.array([[1.5, -2.0, 0.25], [3.0, 0.0, -0.5]], ml_dtypes.bfloat16)
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype)
    return np.array([[1, 2, 3], [4, 5, 6]], dtype=dtype or datatype.lower())


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips(
    client: httpclient.InferenceServerClient, datatype: str
) -> None:
    data = values(datatype)
    # tritonclient sends BF16 only as binary; everything else both ways.
    for binary in [True] if datatype == "BF16" else [False, True]:
        if datatype == "BYTES" and not binary:
            data = np.array([[b"a", "é".encode(), b""], [b"xyz", b"q", b"long" * 20]], dtype=object)
        tensor = httpclient.InferInput("INPUT0", list(data.shape), datatype)
        tensor.set_data_from_numpy(data, binary_data=binary)
        result = client.infer(
            f"identity_{datatype.lower()}",
            [tensor],
            outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)],
        )
        got = result.as_numpy("OUTPUT0")
        assert got.dtype == data.dtype
        np.testing.assert_array_equal(got, data)


def test_concurrent_requests_each_get_their_rows(client: httpclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(11)
    batches = [rng.integers(0, 17, (1 + i % 3, 64)).astype(np.float32) for i in range(24)]
    pending = []
    for images in batches:
        tensor = httpclient.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images, binary_data=True)
        pending.append(client.async_infer("digits", [tensor]))
    reference = session("digits")
    for images, request in zip(batches, pending):
        result = request.get_result()
        np.testing.assert_array_equal(
            result.as_numpy("label"), reference.run(["label"], {"image": images})[0]
        )


@pytest.mark.parametrize(
    ("model", "shape", "datatype", "status", "message"),
    [
        (
            "digits",
            [1, 63],
            "FP32",
            "400",
            "input 'image': shape [1, 63] does not fit the model's [-1, 64]",
        ),
        (
            "digits",
            [1, 64],
            "FP64",
            "400",
            "input 'image': datatype FP64 does not match the model's FP32",
        ),
        ("digits", [40, 64], "FP32", "400", "batch of 40 rows"),
        ("ghost", [1, 64], "FP32", "404", "unknown model 'ghost'"),
    ],
)
def test_errors_reach_the_client(
    client: httpclient.InferenceServerClient,
    model: str,
    shape: list[int],
    datatype: str,
    status: str,
    message: str,
) -> None:
    tensor = httpclient.InferInput("image", shape, datatype)
    tensor.set_data_from_numpy(
        np.zeros(shape, dtype=np.float32 if datatype == "FP32" else np.float64)
    )
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, [tensor])
    assert err.value.status() == status
    assert message in err.value.message()


def test_load_and_unload_through_the_client(client: httpclient.InferenceServerClient) -> None:
    client.unload_model("iris")
    assert not client.is_model_ready("iris")
    client.load_model("iris")
    assert client.is_model_ready("iris")


def test_compressed_request_and_response(client: httpclient.InferenceServerClient) -> None:
    tensor = httpclient.InferInput("features", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], np.float32), binary_data=False)
    result = client.infer(
        "iris",
        [tensor],
        request_compression_algorithm="gzip",
        response_compression_algorithm="deflate",
    )
    assert result.as_numpy("class").tolist() == [[2]]


def test_tritonclient_parses_the_statistics(client: httpclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("digits")["model_stats"][0]
    tensor = httpclient.InferInput("image", [2, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 64), np.float32))
    for _ in range(3):
        client.infer("digits", [tensor])
    after = client.get_inference_statistics("digits", "1")["model_stats"][0]
    success = (
        after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    )
    assert success == 3
    assert after["inference_count"] - before["inference_count"] == 6  # 3 requests of 2 rows
    everything = client.get_inference_statistics()
    assert {s["name"] for s in everything["model_stats"]} >= {"iris", "digits"}


def test_metrics_on_a_separate_port(tmp_path: Path) -> None:
    from tests.live import free_port

    root = tmp_path / "models"
    onnx_models.copy_samples(root)
    port = free_port()
    with live_server(root, env={"CINFER_METRICS__PORT": str(port)}) as (url, _):
        assert httpx.get(f"{url}/metrics").status_code == 404
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert scraped.status_code == 200
        assert 'nv_inference_count{model="iris",version="1"}' in scraped.text
