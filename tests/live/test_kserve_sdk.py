"""The real server driven by the KServe Python SDK's REST client (issue 11).

`kserve.InferenceRESTClient` builds its bodies with `InferRequest.to_rest()`, which puts
``"model_name"`` (and an ``"id"``, a UUID when none is given) in every infer body: the server
refused that field until issue 11, so every SDK request failed with a 400. The SDK's REST
client has no model-metadata call; its `InferenceGRPCClient` needs a gRPC endpoint, which the
server does not have yet (not tested here).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

from tests import onnx_models
from tests.live import live_server

pytestmark = pytest.mark.anyio

IDENTITIES = ["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("kserve") / "models"
    root.mkdir()
    onnx_models.copy_samples(root)
    onnx_models.identity_models(root, IDENTITIES)
    with live_server(root) as (base, _):
        yield base


@pytest.fixture
async def client() -> AsyncIterator[InferenceRESTClient]:
    sdk = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    yield sdk
    await sdk.close()


def reference(model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    path = onnx_models.SAMPLES / model / "1" / "model.onnx"
    return ort.InferenceSession(str(path)).run(None, feeds)


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> InferInput:
    sent = InferInput(name, list(array.shape), datatype)
    sent.set_data_from_numpy(array, binary_data=binary)
    return sent


async def test_health_and_readiness(client: InferenceRESTClient, url: str) -> None:
    assert await client.is_server_live(url) is True
    assert await client.is_server_ready(url) is True
    assert await client.is_model_ready(url, "digits") is True
    assert await client.is_model_ready(url, "nope") is False


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
async def test_digits_match_onnxruntime(
    client: InferenceRESTClient, url: str, binary: bool
) -> None:
    images = np.random.default_rng(5).integers(0, 17, (3, 64)).astype(np.float32)
    request = InferRequest(
        "digits",
        [tensor("image", images, "FP32", binary)],
        request_id="sdk-1",
        request_outputs=[
            RequestedOutput("probabilities", {"binary_data": binary}),
            RequestedOutput("label", {"binary_data": binary}),
        ],
    )
    _, json_length = request.to_rest()
    assert (json_length is not None) is binary  # the SDK really sends what is tested
    response = await client.infer(url, request, model_name="digits")
    probabilities, labels = reference("digits", {"image": images})
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    np.testing.assert_allclose(outputs["probabilities"], probabilities, rtol=1e-6)
    np.testing.assert_array_equal(outputs["label"], labels)
    assert outputs["label"].dtype == np.int64
    assert response.id == "sdk-1" and response.model_name == "digits"


async def test_the_sdk_id_is_echoed_and_all_outputs_come_without_a_list(
    client: InferenceRESTClient, url: str
) -> None:
    flowers = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
    request = InferRequest("iris", [tensor("features", flowers, "FP32", True)])
    response = await client.infer(url, request, model_name="iris")
    uuid.UUID(response.id)  # the id to_rest() made up (a new one per call), echoed
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    probabilities, labels = reference("iris", {"features": flowers})
    np.testing.assert_allclose(outputs["probabilities"], probabilities, rtol=1e-6)
    assert outputs["class"].ravel().tolist() == labels.ravel().tolist() == [0, 2]


@pytest.mark.parametrize("binary_output", [True, False])
async def test_binary_data_output_parameter(
    client: InferenceRESTClient, url: str, binary_output: bool
) -> None:
    flowers = np.array([[6.7, 3.0, 5.2, 2.3]], np.float32)
    request = InferRequest(
        "iris",
        [tensor("features", flowers, "FP32", False)],
        parameters={"binary_data_output": binary_output},
    )
    headers: dict[str, str] = {}
    response = await client.infer(url, request, model_name="iris", response_headers=headers)
    assert ("inference-header-content-length" in headers) is binary_output
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    assert outputs["class"].tolist() == [[2]]


def values(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"a", "é".encode(), b""], [b"xyz", b"q", b"long" * 20]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype)
    return np.array([[1, 2, 3], [4, 250, 6]], dtype=dtype or datatype.lower())


@pytest.mark.parametrize("datatype", IDENTITIES)
async def test_datatypes_round_trip(client: InferenceRESTClient, url: str, datatype: str) -> None:
    data = values(datatype)
    # The SDK refuses to send or read FP16 as JSON.
    for binary in [True] if datatype == "FP16" else [False, True]:
        request = InferRequest(
            f"identity_{datatype.lower()}",
            [tensor("INPUT0", data, datatype, binary)],
            request_outputs=[RequestedOutput("OUTPUT0", {"binary_data": binary})],
        )
        response = await client.infer(url, request, model_name=f"identity_{datatype.lower()}")
        (output,) = response.outputs
        assert (output.name, output.datatype, output.shape) == ("OUTPUT0", datatype, [2, 3])
        got = output.as_numpy()
        if datatype == "BYTES":  # the SDK hands BYTES back as str
            assert got.tolist() == [[v.decode() for v in row] for row in data.tolist()]
        else:
            assert got.dtype == data.dtype
            np.testing.assert_array_equal(got, data)


async def test_a_body_naming_another_model_is_a_400_naming_both(
    client: InferenceRESTClient, url: str
) -> None:
    flowers = np.ones((1, 4), np.float32)
    request = InferRequest("digits", [tensor("features", flowers, "FP32", False)])
    with pytest.raises(httpx.HTTPStatusError) as err:
        await client.infer(url, request, model_name="iris")
    assert err.value.response.status_code == 400
    assert err.value.response.json() == {
        "error": 'model_name "digits" in the body does not match the model "iris" the request '
        "is addressed to"
    }


async def test_errors_reach_the_sdk(client: InferenceRESTClient, url: str) -> None:
    request = InferRequest("digits", [tensor("image", np.ones((1, 63), np.float32), "FP32", True)])
    with pytest.raises(httpx.HTTPStatusError) as err:
        await client.infer(url, request, model_name="digits")
    assert err.value.response.status_code == 400
    assert "input 'image': shape [1, 63] does not fit the model's [-1, 64]" in str(err.value)
