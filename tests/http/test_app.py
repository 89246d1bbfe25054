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
            "model_configuration",
            "model_repository",
            "statistics",
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
            "model 'iris' has no version '7' (available: 1)",
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
            "the inference request needs 'inputs', a non-empty list",
        ),
        (b"{}", {"Inference-Header-Content-Length": "99"}, "Inference-Header-Content-Length 99"),
        (b"{}", {"Inference-Header-Content-Length": "two"}, "must be an integer"),
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
