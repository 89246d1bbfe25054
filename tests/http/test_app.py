"""Every endpoint in-process (httpx ASGITransport over the real app and real models)."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from server.settings import Settings
from tests import onnx_models
from tests.conftest import eventually, held, running_app, slow_model

pytestmark = pytest.mark.anyio

IRIS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def reshape_model(path: Path) -> Path:
    """OUT = Reshape(DATA, SHAPE): fails inside onnxruntime when SHAPE does not fit DATA."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["DATA", "SHAPE"], ["OUT"])],
        "reshape",
        [
            helper.make_tensor_value_info("DATA", TensorProto.FLOAT, [-1]),
            helper.make_tensor_value_info("SHAPE", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, [-1])],
    )
    return onnx_models._save(graph, path)


@pytest.fixture
def repository(repo: Path) -> Path:
    onnx_models.copy_samples(repo)
    onnx_models.add_sub(repo / "add_sub" / "1" / "model.onnx")
    (repo / "add_sub" / "model.toml").write_text(
        'engine = "onnxruntime"\nmax_batch_size = 8\n[batching]\n'
    )
    onnx_models.identity(repo / "strings" / "1" / "model.onnx", "BYTES", ["batch", 2])
    (repo / "strings" / "model.toml").write_text('engine = "onnxruntime"\nmax_batch_size = 4\n')
    reshape_model(repo / "reshape" / "1" / "model.onnx")
    (repo / "reshape" / "model.toml").write_text('engine = "onnxruntime"\n')
    # A model whose model.toml declares a schema the file does not have.
    onnx_models.identity(repo / "mismatch" / "1" / "model.onnx", "FP32", ["batch", 4])
    (repo / "mismatch" / "model.toml").write_text(
        'engine = "onnxruntime"\nmax_batch_size = 4\n'
        '[[inputs]]\nname = "INPUT0"\ndatatype = "FP64"\nshape = [4]\n'
    )
    (repo / "broken").mkdir()
    (repo / "broken" / "model.toml").write_text('engine = "onnxruntime"\nmax_batch = 3\n')
    return repo


def iris_reference(x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(onnx_models.SAMPLES / "iris" / "1" / "model.onnx"))
    return session.run(None, {"features": x})


async def test_health_and_server_metadata(repository: Path) -> None:
    async with running_app(repository) as (client, _):
        assert (await client.get("/v2/health/live")).status_code == 200
        ready = await client.get("/v2/health/ready")
        # One model failed to load: the server is still ready (its own endpoints say so).
        assert ready.status_code == 200 and ready.json() == {"ready": True}
        meta = (await client.get("/v2")).json()
        assert meta["name"] == "cinfer"
        assert meta["extensions"] == [
            "binary_tensor_data",
            "classification",
            "model_configuration",
            "model_repository",
            "statistics",
            "system_shared_memory",
        ]


async def test_model_metadata_shapes(repository: Path) -> None:
    async with running_app(repository) as (client, _):
        digits = (await client.get("/v2/models/digits")).json()
        assert digits["versions"] == ["1"]
        assert digits["platform"] == "onnxruntime_onnx"
        assert digits["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 64]}]
        assert digits["outputs"] == [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
            {"name": "label", "datatype": "INT64", "shape": [-1, 1]},
        ]
        assert digits["state"] == "READY"
        versioned = (await client.get("/v2/models/iris/versions/1")).json()
        assert versioned["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]


async def test_model_config_is_tritons_shape(repository: Path) -> None:
    async with running_app(repository) as (client, _):
        config = (await client.get("/v2/models/digits/config")).json()
        assert config["max_batch_size"] == 32
        assert config["platform"] == "onnxruntime_onnx"
        assert config["input"][0] == {
            "name": "image",
            "data_type": "TYPE_FP32",
            "format": "FORMAT_NONE",
            "dims": [64],
            "is_shape_tensor": False,
            "allow_ragged_batch": False,
            "optional": False,
        }
        assert config["output"][1]["data_type"] == "TYPE_INT64"
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 0
        assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 1024
        assert config["model_transaction_policy"] == {"decoupled": False}
        assert config["instance_group"][0]["count"] == 1
        iris = (await client.get("/v2/models/iris/versions/1/config")).json()
        assert "dynamic_batching" not in iris and iris["max_batch_size"] == 0
        assert iris["input"][0]["dims"] == [-1, 4]


async def test_ready_endpoints(repository: Path) -> None:
    async with running_app(repository) as (client, _):
        assert (await client.get("/v2/models/iris/ready")).status_code == 200
        assert (await client.get("/v2/models/iris/versions/1/ready")).status_code == 200
        failed = await client.get("/v2/models/mismatch/ready")
        assert failed.status_code == 503 and failed.json()["ready"] is False
        assert (await client.get("/v2/models/nope/ready")).status_code == 404


async def test_json_infer_matches_onnxruntime(repository: Path) -> None:
    async with running_app(repository) as (client, _):
        response = await client.post(
            "/v2/models/iris/infer",
            json={
                "id": "req-1",
                "parameters": {"custom": 1},
                "inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": IRIS}],
            },
        )
        assert response.status_code == 200
        body = response.json()
        assert body["model_name"] == "iris" and body["model_version"] == "1"
        assert body["id"] == "req-1"
        outputs = {o["name"]: o for o in body["outputs"]}
        probabilities, labels = iris_reference(np.array(IRIS, np.float32))
        np.testing.assert_allclose(
            np.array(outputs["probabilities"]["data"]).reshape(2, 3), probabilities, rtol=1e-6
        )
        assert outputs["class"]["data"] == labels.ravel().tolist() == [0, 2]
        assert all("parameters" not in o for o in body["outputs"])


async def test_requested_output_subset_binary(repository: Path) -> None:
    x = np.array(IRIS, np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "class", "parameters": {"binary_data": True}}],
        }
    ).encode()
    async with running_app(repository) as (client, _):
        for _ in range(2):  # the second request reuses the cached header layout
            response = await client.post(
                "/v2/models/iris/infer",
                content=header + x.tobytes(),
                headers={"Inference-Header-Content-Length": str(len(header))},
            )
            assert response.status_code == 200
            length = int(response.headers["inference-header-content-length"])
            doc = json.loads(response.content[:length])
            assert [o["name"] for o in doc["outputs"]] == ["class"]
            assert doc["outputs"][0]["parameters"] == {"binary_data_size": 16}
            expected = iris_reference(x)[1].ravel().tolist()
            assert np.frombuffer(response.content[length:], np.int64).tolist() == expected
            x = x[::-1].copy()  # same header, other data: answers follow the data


async def test_cached_binary_layout_follows_each_body(repository: Path) -> None:
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 17, (2, 64)).astype(np.float32) for _ in range(3)]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 512},
                }
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
        }
    ).encode()
    session = ort.InferenceSession(str(onnx_models.SAMPLES / "digits" / "1" / "model.onnx"))
    async with running_app(repository) as (client, _):
        for image in images:
            response = await client.post(
                "/v2/models/digits/infer",
                content=header + image.tobytes(),
                headers={"Inference-Header-Content-Length": str(len(header))},
            )
            length = int(response.headers["inference-header-content-length"])
            got = np.frombuffer(response.content[length:], np.int64)
            assert got.tolist() == session.run(["label"], {"image": image})[0].ravel().tolist()
        # The same header with a body of the wrong size is still checked, not trusted.
        short = await client.post(
            "/v2/models/digits/infer",
            content=header + images[0].tobytes()[:-4],
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert short.status_code == 400
        assert "binary_data_size 512 runs past the end of the body" in short.json()["error"]


async def test_two_inputs_and_bytes(repository: Path) -> None:
    async with running_app(repository) as (client, _):
        response = await client.post(
            "/v2/models/add_sub/infer",
            json={
                "inputs": [
                    {"name": "B", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]},
                    {"name": "A", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]},
                ]
            },
        )
        outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
        assert outputs == {"SUM": [2, 3, 4, 5], "DIFF": [0, 1, 2, 3]}
        strings = await client.post(
            "/v2/models/strings/infer",
            json={
                "inputs": [
                    {
                        "name": "INPUT0",
                        "shape": [1, 2],
                        "datatype": "BYTES",
                        "data": ["héllo", "wörld"],
                    }
                ]
            },
        )
        assert strings.json()["outputs"][0]["data"] == ["héllo", "wörld"]


async def test_gzip_request_and_response(repository: Path) -> None:
    body = json.dumps(
        {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": IRIS}]}
    ).encode()
    async with running_app(repository) as (client, _):
        response = await client.post(
            "/v2/models/iris/infer",
            content=gzip.compress(body),
            headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip"},
        )
        assert response.status_code == 200
        assert response.headers["content-encoding"] == "gzip"
        assert response.json()["outputs"][1]["data"] == [0, 2]


FEATURES = {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        (
            "/v2/models/iris/infer",
            {"inputs": [{**FEATURES, "name": "petals"}]},
            400,
            "unknown input 'petals' for model 'iris' (it takes: features)",
        ),
        (
            "/v2/models/add_sub/infer",
            {"inputs": [{"name": "A", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
            400,
            "missing input 'B' for model 'add_sub' (it takes: A, B)",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{**FEATURES, "datatype": "FP64"}]},
            400,
            "input 'features': datatype FP64 does not match the model's FP32",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{**FEATURES, "shape": [2, 2]}]},
            400,
            "input 'features': shape [2, 2] does not fit the model's [-1, 4]",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{**FEATURES, "shape": [1, 5]}]},
            400,
            "input 'features': shape [1, 5] needs 5 elements, 'data' has 4",
        ),
        (
            "/v2/models/digits/infer",
            {
                "inputs": [
                    {"name": "image", "shape": [33, 64], "datatype": "FP32", "data": [0] * 33 * 64}
                ]
            },
            400,
            "input 'image': batch of 33 rows; model 'digits' takes 1 to 32 (max_batch_size)",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [FEATURES], "outputs": [{"name": "colour"}]},
            400,
            "unknown output 'colour' requested from model 'iris' (it has: probabilities, class)",
        ),
        ("/v2/models/nope/infer", {"inputs": [FEATURES]}, 404, "unknown model 'nope'"),
        (
            "/v2/models/iris/versions/7/infer",
            {"inputs": [FEATURES]},
            404,
            "model 'iris' has no version \"7\" (available: 1)",
        ),
        (
            "/v2/models/mismatch/infer",
            {"inputs": [FEATURES]},
            503,
            "model 'mismatch' version 1 is UNAVAILABLE: input 'INPUT0': declared datatype FP64, "
            "model file has FP32",
        ),
        (
            "/v2/models/broken/infer",
            {"inputs": [FEATURES]},
            503,
            "model 'broken' is not available: ",
        ),
        (
            "/v2/models/reshape/infer",
            {
                "inputs": [
                    {"name": "DATA", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]},
                    {"name": "SHAPE", "shape": [1], "datatype": "INT64", "data": [5]},
                ]
            },
            500,
            "onnxruntime failed: ",
        ),
    ],
)
async def test_infer_errors(
    repository: Path, path: str, body: dict, status: int, message: str
) -> None:
    async with running_app(repository) as (client, _):
        response = await client.post(path, json=body)
        assert response.status_code == status
        error = response.json()["error"]
        assert error.startswith(message), error
        assert "Traceback" not in error


@pytest.mark.parametrize(
    ("content", "headers", "message"),
    [
        (b"{oops", {}, "malformed JSON in the inference request"),
        (b"", {}, "malformed JSON in the inference request"),
        (
            b'{"inputs": []}xxxx',
            {"Inference-Header-Content-Length": "14"},
            "inputs: expected a non-empty list of tensors, got []",
        ),
        (b"{}", {"Inference-Header-Content-Length": "99"}, "Inference-Header-Content-Length 99"),
        (b"{}", {"Inference-Header-Content-Length": "two"}, "must be a positive integer"),
        (b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}, "body is not valid gzip data"),
    ],
)
async def test_malformed_bodies_are_400(
    repository: Path, content: bytes, headers: dict, message: str
) -> None:
    async with running_app(repository) as (client, _):
        response = await client.post("/v2/models/iris/infer", content=content, headers=headers)
        assert response.status_code == 400
        assert message in response.json()["error"]


async def test_body_over_the_limit_is_413(repository: Path) -> None:
    settings = Settings.model_validate({"server": {"max_request_bytes": 1000}})
    async with running_app(repository, settings) as (client, _):
        big = json.dumps({"inputs": [{**FEATURES, "data": [0.5] * 400}]}).encode()
        response = await client.post("/v2/models/iris/infer", content=big)
        assert response.status_code == 413
        assert "exceeds max_request_bytes (1000)" in response.json()["error"]
        # A small body compressed to under the limit that inflates past it is refused too.
        bomb = gzip.compress(b" " * 100_000)
        response = await client.post(
            "/v2/models/iris/infer", content=bomb, headers={"Content-Encoding": "gzip"}
        )
        assert response.status_code == 413


async def test_queue_full_and_queue_timeout_are_503(repo: Path) -> None:
    slow_model(repo, "max_queue_size = 2")
    one_row = {
        "inputs": [{"name": "INPUT0", "shape": [1, 512], "datatype": "FP32", "data": [0.0] * 512}]
    }
    async with running_app(repo) as (client, dataplane):
        pool = dataplane.reconciler.models["slow"].get(None).pool
        assert pool is not None

        def infer() -> asyncio.Task[httpx.Response]:
            return asyncio.create_task(client.post("/v2/models/slow/infer", json=one_row))

        with held(pool) as holding:
            holder = infer()
            await eventually(holding.is_set, "the first request to hold the only instance")
            # The queue timeout comes only now, in place: the request holding the instance
            # must not meet it, however late its thread got to run.
            timeout_us = 20_000
            toml = (repo / "slow" / "model.toml").read_text()
            (repo / "slow" / "model.toml").write_text(f"{toml}timeout_us = {timeout_us}\n")
            assert (await client.post("/v2/repository/models/slow/load")).status_code == 200
            assert pool.config.batching is not None
            assert pool.config.batching.timeout_us == timeout_us

            waiting = [infer() for _ in range(8)]
            # Two fit in the queue; the other six are refused at once.
            await eventually(lambda: sum(t.done() for t in waiting) == 6, "six refusals")
            refused = [t.result() for t in waiting if t.done()]
            queued = [t for t in waiting if not t.done()]
            assert pool.pending == 3
            # The two queued ones have now waited for longer than timeout_us.
            since = time.perf_counter_ns()
            await eventually(
                lambda: time.perf_counter_ns() - since > timeout_us * 1000, "the queue timeout"
            )
        assert (await holder).status_code == 200
        timed_out = [await t for t in queued]
    for response in refused:
        assert response.status_code == 503
        assert "queue full (2 requests waiting" in response.json()["error"]
    for response in timed_out:
        assert response.status_code == 503
        assert "request timed out in the queue after" in response.json()["error"]


async def test_repository_index_and_load_unload(repository: Path) -> None:
    async with running_app(repository) as (client, _):
        index = (await client.post("/v2/repository/index")).json()
        states = {(e["name"], e.get("version")): (e["state"], e["reason"]) for e in index}
        assert states[("iris", "1")] == ("READY", "")
        assert states[("mismatch", "1")][0] == "UNAVAILABLE"
        assert "declared datatype FP64" in states[("mismatch", "1")][1]
        assert states[("broken", None)][0] == "UNAVAILABLE"
        assert "broken/model.toml line 2: max_batch: unknown key" in states[("broken", None)][1]
        ready = (await client.post("/v2/repository/index", json={"ready": True})).json()
        assert {e["name"] for e in ready} == {"add_sub", "digits", "iris", "reshape", "strings"}

        assert (await client.post("/v2/repository/models/iris/unload")).status_code == 200
        assert (await client.get("/v2/models/iris")).status_code == 404
        assert (await client.post("/v2/repository/models/iris/load")).status_code == 200
        assert (await client.get("/v2/models/iris/ready")).status_code == 200

        failed = await client.post("/v2/repository/models/mismatch/load")
        assert failed.status_code == 400 and "declared datatype FP64" in failed.json()["error"]
        missing = await client.post("/v2/repository/models/ghost/load")
        assert missing.status_code == 404
        bad_body = await client.post("/v2/repository/index", json={"ready": "yes please"})
        assert bad_body.status_code == 400 and "ready" in bad_body.json()["error"]


async def test_unknown_routes_and_methods(repository: Path) -> None:
    async with running_app(repository) as (client, _):
        response = await client.get("/v3/anything")
        assert response.status_code == 404
        assert response.json() == {"error": "no route GET /v3/anything"}
        wrong = await client.get("/v2/models/iris/infer")
        assert wrong.status_code == 405
        assert wrong.json() == {"error": "method GET is not allowed on /v2/models/iris/infer"}


async def test_openapi_and_docs(repository: Path) -> None:
    async with running_app(repository) as (client, _):
        spec = (await client.get("/openapi.json")).json()
        assert spec["openapi"] == "3.0.3"
        iris = spec["paths"]["/v2/models/iris/infer"]["post"]
        schema = iris["requestBody"]["content"]["application/json"]["schema"]
        item = schema["properties"]["inputs"]["items"]
        assert item["properties"]["name"]["enum"] == ["features"]
        assert item["properties"]["datatype"]["enum"] == ["FP32"]
        assert item["properties"]["shape"]["minItems"] == 2
        assert schema["example"]["inputs"][0]["shape"] == [1, 4]
        assert schema["properties"]["outputs"]["items"]["properties"]["name"]["enum"] == [
            "probabilities",
            "class",
        ]
        add_sub = spec["paths"]["/v2/models/add_sub/infer"]["post"]
        items = add_sub["requestBody"]["content"]["application/json"]["schema"]["properties"][
            "inputs"
        ]["items"]
        assert [o["title"] for o in items["oneOf"]] == ["A", "B"]
        assert "/v2/models/mismatch/infer" not in spec["paths"]
        assert "InferenceRequest" in spec["components"]["schemas"]
        # The example request of each model is accepted by the model.
        example = schema["example"]
        assert (await client.post("/v2/models/iris/infer", json=example)).status_code == 200

        docs = await client.get("/docs")
        assert docs.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in docs.text
        asset = await client.get("/docs/assets/swagger-ui-bundle.js")
        assert asset.status_code == 200 and len(asset.content) > 100_000


async def test_a_request_cannot_crash_the_server(repository: Path) -> None:
    hostile = [
        b'{"inputs": [{"name": "features", "shape": [1e308], "datatype": "FP32", "data": [1]}]}',
        b'{"inputs": [{"name": "features", "shape": [99999999999, 99999999999], "datatype": "FP32", "data": []}]}',
        b'{"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": {"a": 1}}]}',
        b'{"inputs": [{"name": ["x"], "shape": [1], "datatype": "FP32", "data": [1]}]}',
        b'{"inputs": [{"name": "features", "shape": [true, 4], "datatype": "FP32", "data": [1,2,3,4]}]}',
        b'{"id": {"nested": [1]}, "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1,2,3,4]}]}',
        b'{"inputs": [{"name": "features", "shape": [1, 4], "datatype": "BYTES", "data": [1,2,3,4]}]}',
        b'{"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1,2,3,"\\ud800"]}]}',
        json.dumps(
            {"inputs": [FEATURES], "outputs": [{"name": "class", "parameters": []}]}
        ).encode(),
        json.dumps({"inputs": [FEATURES], "parameters": "binary"}).encode(),
    ]
    async with running_app(repository) as (client, _):
        for body in hostile:
            response = await client.post("/v2/models/iris/infer", content=body)
            assert 400 <= response.status_code < 500, (body, response.text)
            assert "error" in response.json()
        assert (await client.get("/v2/health/live")).status_code == 200


async def test_shutdown_unloads_models(repository: Path) -> None:
    async with running_app(repository) as (_client, dataplane):
        version = dataplane.reconciler.models["iris"].get(None)
        pool = version.pool
        assert pool is not None and pool.instances == 1
    assert version.pool is None and version.state.value == "UNAVAILABLE"
    assert dataplane.reconciler.models == {}
    shutil.rmtree(repository)


# -- issue 11: every member of a body is type-checked; client errors are never BACKEND ---------

BINARY_FEATURES = {
    "name": "features",
    "shape": [1, 4],
    "datatype": "FP32",
    "parameters": {"binary_data_size": 16},
}
MISSING = object()


def malformed(binary: bool, path: tuple[str | int, ...], value: object) -> tuple[bytes, dict]:
    """The iris request, JSON or binary, with the member at `path` set to `value` (MISSING:
    removed); the body and its headers."""
    request: dict = {
        "id": "r-1",
        "inputs": [json.loads(json.dumps(BINARY_FEATURES if binary else FEATURES))],
        "outputs": [{"name": "class"}],
    }
    where: dict | list = request
    for key in path[:-1]:
        where = where[key]  # type: ignore[index]
    if value is MISSING:
        del where[path[-1]]  # type: ignore[arg-type]
    else:
        where[path[-1]] = value  # type: ignore[index]
    header = json.dumps(request).encode()
    if not binary:
        return header, {}
    blob = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32).tobytes()
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


FIELD_ERRORS = [
    (("inputs", 0, "datatype"), {}, "inputs[0].datatype: expected a string, got {}"),
    (("inputs", 0, "datatype"), [], "inputs[0].datatype: expected a string, got []"),
    (("inputs", 0, "datatype"), [1], "inputs[0].datatype: expected a string, got [1]"),
    (("inputs", 0, "datatype"), None, "inputs[0].datatype: expected a string, got null"),
    (("inputs", 0, "datatype"), MISSING, "inputs[0].datatype: missing, expected a string"),
    (("inputs", 0, "datatype"), "fp32", "input 'features': unknown datatype \"fp32\""),
    (("inputs", 0, "name"), 7, "inputs[0].name: expected a non-empty string, got 7"),
    (("inputs", 0, "name"), "", 'inputs[0].name: expected a non-empty string, got ""'),
    (("inputs", 0, "name"), MISSING, "inputs[0].name: missing, expected a non-empty string"),
    (
        ("inputs", 0, "shape"),
        "1,4",
        'inputs[0].shape: expected a list of non-negative integers, got "1,4"',
    ),
    (
        ("inputs", 0, "shape"),
        {"rows": 1},
        'inputs[0].shape: expected a list of non-negative integers, got {"rows":1}',
    ),
    (
        ("inputs", 0, "shape"),
        MISSING,
        "inputs[0].shape: missing, expected a list of non-negative integers",
    ),
    (
        ("inputs", 0, "shape"),
        [1, True],
        "inputs[0].shape[1]: expected a non-negative integer, got true",
    ),
    (
        ("inputs", 0, "shape"),
        [1, 4.0],
        "inputs[0].shape[1]: expected a non-negative integer, got 4.0",
    ),
    (
        ("inputs", 0, "shape"),
        [-1, 4],
        "inputs[0].shape[0]: expected a non-negative integer, got -1",
    ),
    (
        ("inputs", 0, "shape"),
        [1, "4"],
        'inputs[0].shape[1]: expected a non-negative integer, got "4"',
    ),
    (
        ("inputs", 0, "shape"),
        [1, None],
        "inputs[0].shape[1]: expected a non-negative integer, got null",
    ),
    (("inputs", 0, "parameters"), [], "inputs[0].parameters: expected a JSON object, got []"),
    (
        ("inputs", 0, "parameters"),
        "binary",
        'inputs[0].parameters: expected a JSON object, got "binary"',
    ),
    (("inputs", 0), "features", 'inputs[0]: expected a JSON object, got "features"'),
    (
        ("inputs",),
        {"features": [1]},
        'inputs: expected a non-empty list of tensors, got {"features":[1]}',
    ),
    (("inputs",), [], "inputs: expected a non-empty list of tensors, got []"),
    (("inputs",), MISSING, "inputs: missing, expected a non-empty list of tensors"),
    (("id",), 42, "id: expected a string, got 42"),
    (("id",), {"nested": [1]}, 'id: expected a string, got {"nested":[1]}'),
    (("model_name",), 5, "model_name: expected a string, got 5"),
    (("model_name",), ["iris"], 'model_name: expected a string, got ["iris"]'),
    (("model_version",), 1, "model_version: expected a string, got 1"),
    (
        ("model_name",),
        "digits",
        'model_name "digits" in the body does not match the model "iris" the request is addressed to',
    ),
    (
        ("model_version",),
        "2",
        'model_version "2" in the body does not match version "1" of model "iris"',
    ),
    (("parameters",), "binary", 'parameters: expected a JSON object, got "binary"'),
    (("parameters",), [1], "parameters: expected a JSON object, got [1]"),
    (
        ("parameters",),
        {"binary_data_output": "false"},
        'parameters.binary_data_output: expected a boolean, got "false"',
    ),
    (
        ("parameters",),
        {"binary_data_output": "no"},
        'parameters.binary_data_output: expected a boolean, got "no"',
    ),
    (
        ("parameters",),
        {"binary_data_output": 1},
        "parameters.binary_data_output: expected a boolean, got 1",
    ),
    (
        ("parameters",),
        {"priority": "high"},
        'parameters.priority: expected a non-negative integer, got "high"',
    ),
    (
        ("parameters",),
        {"timeout": -1},
        "parameters.timeout: expected a non-negative integer, got -1",
    ),
    (
        ("parameters",),
        {"timeout": True},
        "parameters.timeout: expected a non-negative integer, got true",
    ),
    (
        ("parameters",),
        {"sequence_id": 3},
        "parameters.sequence_id: sequence batching is not supported",
    ),
    (("outputs",), {"name": "class"}, 'outputs: expected a list, got {"name":"class"}'),
    (("outputs", 0), "class", 'outputs[0]: expected a JSON object, got "class"'),
    (("outputs", 0, "name"), 3, "outputs[0].name: expected a non-empty string, got 3"),
    (("outputs", 0, "name"), MISSING, "outputs[0].name: missing, expected a non-empty string"),
    (("outputs", 0, "parameters"), [], "outputs[0].parameters: expected a JSON object, got []"),
    (
        ("outputs", 0, "parameters"),
        {"binary_data": "false"},
        'outputs[0].parameters.binary_data: expected a boolean, got "false"',
    ),
    (
        ("outputs", 0, "parameters"),
        {"binary_data": 0},
        "outputs[0].parameters.binary_data: expected a boolean, got 0",
    ),
    (("outputs", 0, "name"), "colour", "unknown output 'colour' requested from model 'iris'"),
    (("model",), "iris", 'unknown field(s) in the inference request: ["model"]'),
]

JSON_ONLY = [
    (("inputs", 0, "data"), {"a": 1}, 'inputs[0].data: expected a list, got {"a":1}'),
    (("inputs", 0, "data"), 5, "inputs[0].data: expected a list, got 5"),
    (("inputs", 0, "data"), "1,2,3,4", 'inputs[0].data: expected a list, got "1,2,3,4"'),
    (("inputs", 0, "data"), MISSING, "input 'features' has neither 'data' nor binary_data_size"),
    (
        ("inputs", 0, "data"),
        [1, 2, 3, None],
        "input 'features': FP32 data must be numbers, got null",
    ),
    (("inputs", 0, "data"), [1, 2, 3, {}], "input 'features': FP32 data must be numbers, got {}"),
    (
        ("inputs", 0, "data"),
        [1, 2, 3, "4"],
        "input 'features': FP32 data must be numbers, got \"4\"",
    ),
    (("inputs", 0, "data"), [[1, 2], [3]], "input 'features': 'data' is not a regular array"),
    (
        ("inputs", 0),
        {"name": "features", "shape": [0, 2**62], "datatype": "FP32", "data": []},
        "input 'features': shape [0, 4611686018427387904] is too large",
    ),
]

BINARY_ONLY = [
    (
        ("inputs", 0, "parameters", "binary_data_size"),
        "16",
        'inputs[0].parameters.binary_data_size: expected a non-negative integer, got "16"',
    ),
    (
        ("inputs", 0, "parameters", "binary_data_size"),
        True,
        "inputs[0].parameters.binary_data_size: expected a non-negative integer, got true",
    ),
    (
        ("inputs", 0, "parameters", "binary_data_size"),
        16.0,
        "inputs[0].parameters.binary_data_size: expected a non-negative integer, got 16.0",
    ),
    (
        ("inputs", 0, "parameters", "binary_data_size"),
        -16,
        "inputs[0].parameters.binary_data_size: expected a non-negative integer, got -16",
    ),
    (
        ("inputs", 0, "parameters", "binary_data_size"),
        12,
        "input 'features': shape [1, 4] of FP32 needs 16 bytes, binary_data_size is 12",
    ),
    (
        ("inputs", 0, "parameters", "binary_data_size"),
        20,
        "input 'features': binary_data_size 20 runs past the end of the body (16 bytes left)",
    ),
    (
        ("inputs", 0, "parameters", "binary_data_size"),
        MISSING,
        "input 'features' has neither 'data' nor binary_data_size",
    ),
    (
        ("inputs", 0, "shape"),
        [1, 2],
        "input 'features': shape [1, 2] of FP32 needs 8 bytes, binary_data_size is 16",
    ),
    (
        ("inputs", 0, "data"),
        [1, 2, 3, 4],
        "input 'features': give either 'data' or binary_data_size, not both",
    ),
]


def field_cases() -> list:
    cases = []
    for binary, table in ((False, FIELD_ERRORS + JSON_ONLY), (True, FIELD_ERRORS + BINARY_ONLY)):
        for path, value, message in table:
            label = f"{'binary' if binary else 'json'}:{'.'.join(map(str, path))}={value!r}"
            cases.append(pytest.param(binary, path, value, message, id=label))
    return cases


async def failures(client: object, reason: str) -> float:
    text = (await client.get("/metrics")).text  # type: ignore[attr-defined]
    prefix = f'nv_inference_request_failure{{model="iris",reason="{reason}",version="1"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


@pytest.fixture
def iris_only(repo: Path) -> Path:
    shutil.copytree(onnx_models.SAMPLES / "iris", repo / "iris")
    return repo


@pytest.mark.parametrize(("binary", "path", "value", "message"), field_cases())
async def test_every_member_is_type_checked_and_named(
    iris_only: Path, binary: bool, path: tuple, value: object, message: str
) -> None:
    content, headers = malformed(binary, path, value)
    async with running_app(iris_only) as (client, dataplane):
        response = await client.post("/v2/models/iris/infer", content=content, headers=headers)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error.startswith(message), error
        stats = dataplane.version("iris", None).requests
        assert stats.failures["BACKEND"] == 0 and stats.failures["OTHER"] == 1
        assert await failures(client, "BACKEND") == 0
        assert await failures(client, "OTHER") == 1
        # The same request, well formed, is answered.
        fine, fine_headers = malformed(binary, ("id",), "r-2")
        ok = await client.post("/v2/models/iris/infer", content=fine, headers=fine_headers)
        assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("header_length", "message"),
    [
        (
            "-5",
            'Inference-Header-Content-Length must be a positive integer (the JSON header\'s bytes), got "-5"',
        ),
        ("1e3", 'got "1e3"'),
        ("0x20", 'got "0x20"'),
        ("", 'got ""'),
        ("0", "Inference-Header-Content-Length 0 does not fit a body of"),
        ("100000", "Inference-Header-Content-Length 100000 does not fit a body of"),
        ("9" * 5000, "Inference-Header-Content-Length 999999999999999999999999 does not fit"),
        ("10", "malformed JSON in the inference request"),
    ],
)
async def test_garbage_header_lengths_are_400(
    iris_only: Path, header_length: str, message: str
) -> None:
    content, _ = malformed(True, ("id",), "r-1")
    async with running_app(iris_only) as (client, _):
        response = await client.post(
            "/v2/models/iris/infer",
            content=content,
            headers={"Inference-Header-Content-Length": header_length},
        )
        assert response.status_code == 400, response.text
        assert message in response.json()["error"], response.json()["error"]


def length_prefixed(*values: bytes) -> bytes:
    return b"".join(len(v).to_bytes(4, "little") + v for v in values)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (length_prefixed(b"a"), "input 'INPUT0': 2 BYTES elements need at least 8 bytes"),
        (
            length_prefixed(b"ab", b"cd")[:-1],
            "input 'INPUT0': BYTES element 1 claims 2 bytes, only 1 are left",
        ),
        (
            length_prefixed(b"ab") + b"\xff\xff\xff\xff",
            "input 'INPUT0': BYTES element 1 claims 4294967295 bytes, only 0 are left",
        ),
        (
            length_prefixed(b"a", b"b") + b"!",
            "input 'INPUT0': 1 bytes left over after 2 BYTES elements",
        ),
        (
            length_prefixed(b"abc") + b"\x00\x00\x00",
            "input 'INPUT0': BYTES data ends after 1 of 2 elements",
        ),
    ],
)
async def test_malformed_bytes_length_prefixes_are_400(
    repository: Path, blob: bytes, message: str
) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [1, 2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    async with running_app(repository) as (client, dataplane):
        response = await client.post(
            "/v2/models/strings/infer",
            content=header + blob,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"].startswith(message), response.json()["error"]
        assert dataplane.version("strings", None).requests.failures["BACKEND"] == 0
