"""The response cache against real servers, driven by tritonclient.http: what hits and what
never does, eviction at the byte limit, reload invalidation, the statistics and metrics, and
Redis shared by two servers and killed under load (docs/cache.md)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests import onnx_models
from tests.live import free_port, live_server, server_log, wait_until

CACHED = 'engine = "onnxruntime"\nmax_batch_size = 8\n[cache]\nenabled = true\n'
TWO_VERSIONS = CACHED + "[version_policy]\nall = true\n"


def repository(root: Path) -> Path:
    """`dense` (INPUT0 -> OUTPUT0 FP32 [batch, 16], versions 1 and 2 with other weights),
    `pair` (A, B -> SUM, DIFF), both cached, and `plain` (dense, no [cache])."""
    built = root.parent / "built"
    onnx_models.model_folder(
        root,
        "dense",
        TWO_VERSIONS,
        {
            1: onnx_models.dense(built / "d1" / "model.onnx", seed=1),
            2: onnx_models.dense(built / "d2" / "model.onnx", seed=2),
        },
    )
    onnx_models.model_folder(
        root, "pair", CACHED, {1: onnx_models.add_sub(built / "p" / "model.onnx")}
    )
    onnx_models.dense_folder(root, "plain", 'engine = "onnxruntime"\nmax_batch_size = 8\n')
    return root


def infer(
    client: httpclient.InferenceServerClient,
    model: str,
    data: np.ndarray,
    version: str = "",
    binary: bool = True,
    outputs: list[httpclient.InferRequestedOutput] | None = None,
    name: str = "INPUT0",
    request_id: str = "",
) -> httpclient.InferResult:
    tensor = httpclient.InferInput(name, list(data.shape), "FP32")
    tensor.set_data_from_numpy(data, binary_data=binary)
    return client.infer(
        model, [tensor], model_version=version, outputs=outputs, request_id=request_id
    )


def cache_counts(
    client: httpclient.InferenceServerClient, model: str, version: str = ""
) -> tuple[int, int]:
    """(hits, misses) from the statistics extension, as tritonclient parses it (`dense`
    serves version 2 unless a request names 1)."""
    version = version or ("2" if model == "dense" else "1")
    stats = client.get_inference_statistics(model, version)["model_stats"][0]["inference_stats"]
    return int(stats["cache_hit"]["count"]), int(stats["cache_miss"]["count"])


def metrics(url: str) -> dict[tuple[str, str], float]:
    """(sample name, model) -> value of the /metrics samples of the version each model
    serves by default (the parser writes counters with ``_total``, taken off here)."""
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name.removesuffix("_total"), s.labels["model"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("version") == ("2" if s.labels.get("model") == "dense" else "1")
        and "reason" not in s.labels
        and "le" not in s.labels
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = repository(tmp_path_factory.mktemp("cache") / "repository")
    with live_server(root, "--log-level", "info") as (url, _):
        yield url, root


@pytest.fixture
def client(server: tuple[str, Path]) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server[0].removeprefix("http://"))
    yield c
    c.close()


def rows(seed: int, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def test_the_same_request_hits_and_answers_the_same(
    client: httpclient.InferenceServerClient,
) -> None:
    data = rows(1, 2)
    before = cache_counts(client, "dense")
    first = infer(client, "dense", data, request_id="first")
    second = infer(client, "dense", data.copy(), request_id="second")
    assert cache_counts(client, "dense") == (before[0] + 1, before[1] + 1)
    assert np.array_equal(first.as_numpy("OUTPUT0"), second.as_numpy("OUTPUT0"))
    assert second.get_response()["id"] == "second"  # the id is the request's, not the entry's
    # The same tensor sent as JSON is the same request (same datatype, shape and bytes).
    third = infer(client, "dense", data, binary=False)
    assert cache_counts(client, "dense") == (before[0] + 2, before[1] + 1)
    assert np.array_equal(first.as_numpy("OUTPUT0"), third.as_numpy("OUTPUT0"))


def test_what_differs_never_hits(client: httpclient.InferenceServerClient) -> None:
    data = rows(2)
    infer(client, "dense", data)
    hits, misses = cache_counts(client, "dense")
    flipped = data.copy()
    flipped.view(np.uint8)[0, 5] ^= 1  # one bit of one input byte
    out = httpclient.InferRequestedOutput
    variants = [
        lambda: infer(client, "dense", flipped),
        lambda: infer(client, "dense", np.concatenate([data, data])),  # another shape
        lambda: infer(client, "dense", data, outputs=[out("OUTPUT0", binary_data=False)]),
        lambda: infer(client, "dense", data, outputs=[out("OUTPUT0", binary_data=True)]),
        lambda: infer(client, "dense", data, outputs=[out("OUTPUT0", class_count=2)]),
        lambda: infer(client, "dense", data, outputs=[out("OUTPUT0", class_count=3)]),
    ]
    answers = [variant() for variant in variants]
    assert cache_counts(client, "dense") == (hits, misses + len(variants))
    # Each was answered as asked: JSON and binary, two and three classes.
    assert answers[3].get_output("OUTPUT0")["parameters"]["binary_data_size"] == 64
    assert "parameters" not in answers[2].get_output("OUTPUT0")
    assert answers[4].as_numpy("OUTPUT0").shape == (1, 2)
    assert answers[5].as_numpy("OUTPUT0").shape == (1, 3)
    # Version 1 has other weights: its answer is its own, a miss of its own.
    v1 = cache_counts(client, "dense", "1")
    one = infer(client, "dense", data, version="1")
    assert cache_counts(client, "dense", "1") == (v1[0], v1[1] + 1)
    assert not np.array_equal(one.as_numpy("OUTPUT0"), answers[2].as_numpy("OUTPUT0"))
    # Output selection on a two-output model.
    a, b = rows(3)[:, :4], rows(4)[:, :4]

    def pair(*names: str) -> httpclient.InferResult:
        inputs = [httpclient.InferInput(n, [1, 4], "FP32") for n in ("A", "B")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        wanted = [out(n) for n in names] if names else None
        return client.infer("pair", inputs, outputs=wanted)

    both, only_sum, only_diff = pair(), pair("SUM"), pair("DIFF")
    assert cache_counts(client, "pair") == (0, 3)
    assert only_sum.as_numpy("DIFF") is None and only_diff.as_numpy("SUM") is None
    assert np.allclose(both.as_numpy("SUM"), a + b) and np.allclose(
        only_diff.as_numpy("DIFF"), a - b
    )
    pair("SUM")
    assert cache_counts(client, "pair") == (1, 3)


def test_only_successful_answers_are_kept(client: httpclient.InferenceServerClient) -> None:
    data = rows(12)
    wanted = [httpclient.InferRequestedOutput("OUTPUT0", class_count=17)]  # of 16 classes
    hits, misses = cache_counts(client, "dense")
    for _ in range(2):
        with pytest.raises(InferenceServerException, match="17 asks for more classes"):
            infer(client, "dense", data, outputs=wanted)
    assert cache_counts(client, "dense") == (hits, misses + 2)  # looked up, never stored
    bad = httpclient.InferInput("INPUT0", [1, 15], "FP32")  # refused before any lookup
    bad.set_data_from_numpy(data[:, :15])
    with pytest.raises(InferenceServerException, match="does not fit"):
        client.infer("dense", [bad])
    assert cache_counts(client, "dense") == (hits, misses + 2)


def test_a_model_without_cache_is_not_cached(
    server: tuple[str, Path], client: httpclient.InferenceServerClient
) -> None:
    data = rows(5)
    for _ in range(3):
        infer(client, "plain", data)
    assert cache_counts(client, "plain") == (0, 0)
    assert ("nv_cache_num_hits_per_model", "plain") not in metrics(server[0])
    config = client.get_model_config("plain")
    assert config["response_cache"] == {"enable": False}
    assert client.get_model_config("dense")["response_cache"] == {"enable": True}


def test_statistics_and_metrics_count_hits_misses_and_bytes(
    server: tuple[str, Path], client: httpclient.InferenceServerClient
) -> None:
    url = server[0]
    data = rows(6)
    before = metrics(url)
    stats_before = client.get_inference_statistics("dense", "2")["model_stats"][0]
    for _ in range(4):
        infer(client, "dense", data)
    after = metrics(url)
    stats = client.get_inference_statistics("dense", "2")["model_stats"][0]
    assert (
        after[("nv_cache_num_hits_per_model", "dense")]
        - before.get(("nv_cache_num_hits_per_model", "dense"), 0)
        == 3
    )
    assert (
        after[("nv_cache_num_misses_per_model", "dense")]
        - before.get(("nv_cache_num_misses_per_model", "dense"), 0)
        == 1
    )
    assert after[("cinfer_cache_bytes", "dense")] > before.get(("cinfer_cache_bytes", "dense"), 0)
    assert after[("cinfer_cache_entries", "dense")] >= 1
    # Hits are successes, but never reach the engine: one execution for the four requests.
    inference = stats["inference_stats"]
    old = stats_before["inference_stats"]
    assert int(inference["success"]["count"]) - int(old["success"]["count"]) == 4
    assert int(stats["execution_count"]) - int(stats_before["execution_count"]) == 1
    assert int(inference["cache_hit"]["ns"]) > int(old["cache_hit"]["ns"])


def test_a_reload_empties_the_versions_entries(
    server: tuple[str, Path], client: httpclient.InferenceServerClient
) -> None:
    url, root = server
    data = rows(7)
    first = infer(client, "dense", data)
    infer(client, "dense", data)
    assert metrics(url)[("cinfer_cache_entries", "dense")] >= 1
    # New weights for version 2, and the load API: the old answers must not come back.
    onnx_models.dense(root.parent / "built" / "d2b" / "model.onnx", seed=9)
    shutil.copy(root.parent / "built" / "d2b" / "model.onnx", root / "dense" / "2" / "model.onnx")
    client.load_model("dense")
    wait_until(lambda: cache_counts(client, "dense") == (0, 0), "a fresh version 2")
    again = infer(client, "dense", data)
    assert cache_counts(client, "dense") == (0, 1)
    assert not np.array_equal(first.as_numpy("OUTPUT0"), again.as_numpy("OUTPUT0"))
    # The retired load's entries left the cache with it: the new ones are all there is.
    wait_until(
        lambda: metrics(url)[("cinfer_cache_entries", "dense")] == 1, "one entry for version 2"
    )


def test_eviction_at_the_byte_limit(tmp_path: Path) -> None:
    root = repository(tmp_path / "repository")
    limit = 4096  # room for about ten dense answers (key, 64 bytes, overhead)
    with live_server(root, env={"CINFER_CACHE__SIZE_BYTES": str(limit)}) as (url, _):
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        for seed in range(40):
            infer(client, "dense", rows(100 + seed))
        found = metrics(url)
        assert found[("cinfer_cache_evictions", "dense")] > 0
        assert 0 < found[("cinfer_cache_bytes", "dense")] <= limit
        hits, misses = cache_counts(client, "dense")
        infer(client, "dense", rows(139))  # the most recent: still there
        infer(client, "dense", rows(100))  # the oldest: evicted
        assert cache_counts(client, "dense") == (hits + 1, misses + 1)
        client.close()


# -- Redis --------------------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Debian's redis-server on a free port, without persistence (make test-system installs
    it): its URL and process."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (make test-system installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def answers() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    try:
        wait_until(answers, "redis-server to answer")
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_redis_is_shared_by_two_servers(
    tmp_path: Path, redis_server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    root = repository(tmp_path / "repository")
    env = {"CINFER_CACHE__REDIS_URL": redis_server[0]}
    with live_server(root, env=env) as (one, _), live_server(root, env=env) as (two, _):
        first = httpclient.InferenceServerClient(one.removeprefix("http://"))
        second = httpclient.InferenceServerClient(two.removeprefix("http://"))
        data = rows(8)
        answer = infer(first, "dense", data)
        assert cache_counts(first, "dense") == (0, 1)
        # The store runs after the answer is sent: wait until the other server finds it.
        found = wait_until(
            lambda: (r := infer(second, "dense", data)) and cache_counts(second, "dense")[0] and r,
            "the second server to answer from Redis",
        )
        assert np.array_equal(found.as_numpy("OUTPUT0"), answer.as_numpy("OUTPUT0"))
        assert metrics(one)[("cinfer_cache_stored_bytes", "dense")] > 0
        first.close()
        second.close()
    # Both stopped (their shutdown retired every version): Redis kept the answer for the next.
    with live_server(root, env=env) as (three, _):
        third = httpclient.InferenceServerClient(three.removeprefix("http://"))
        again = infer(third, "dense", data)
        assert cache_counts(third, "dense") == (1, 0)
        assert np.array_equal(again.as_numpy("OUTPUT0"), answer.as_numpy("OUTPUT0"))
        third.close()


def test_redis_killed_under_load_fails_no_request(
    tmp_path: Path, redis_server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url_redis, proc = redis_server
    root = repository(tmp_path / "repository")
    env = {"CINFER_CACHE__REDIS_URL": url_redis, "CINFER_CACHE__REDIS_TIMEOUT_MS": "50"}
    with live_server(root, env=env) as (url, _):
        errors: list[BaseException] = []
        done = threading.Event()
        answered = [0]

        def load(worker: int) -> None:
            client = httpclient.InferenceServerClient(url.removeprefix("http://"))
            expected = {}
            try:
                i = 0
                while not done.is_set():
                    seed = worker * 1000 + i % 5  # repeats: hits while Redis lives
                    data = rows(seed)
                    out = infer(client, "dense", data).as_numpy("OUTPUT0")
                    if seed in expected:
                        assert np.array_equal(out, expected[seed])
                    expected[seed] = out
                    answered[0] += 1
                    i += 1
            except BaseException as exc:
                errors.append(exc)
            finally:
                client.close()

        threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        probe = httpclient.InferenceServerClient(url.removeprefix("http://"))
        wait_until(lambda: cache_counts(probe, "dense")[0] >= 20, "hits from Redis")
        proc.kill()
        proc.wait()
        killed_at = answered[0]
        wait_until(
            lambda: metrics(url).get(("cinfer_cache_errors", "dense"), 0) >= 1,
            "the failures counted",
        )
        wait_until(lambda: answered[0] >= killed_at + 200, "requests served without Redis")
        done.set()
        for thread in threads:
            thread.join()
        probe.close()
        assert not errors, errors
        log = server_log(root)
        assert log.count("response cache: Redis at") == 1, log


def test_a_stalled_redis_times_out_and_the_engines_answer(
    tmp_path: Path, redis_server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url_redis, proc = redis_server
    root = repository(tmp_path / "repository")
    env = {"CINFER_CACHE__REDIS_URL": url_redis, "CINFER_CACHE__REDIS_TIMEOUT_MS": "50"}
    with live_server(root, env=env) as (url, _):
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        data = rows(11)
        expected = infer(client, "dense", data).as_numpy("OUTPUT0")
        wait_until(
            lambda: infer(client, "dense", data) and cache_counts(client, "dense")[0] >= 1,
            "a hit from Redis",
        )
        proc.send_signal(signal.SIGSTOP)  # Redis takes connections' bytes and answers nothing
        try:
            for seed in range(20):
                started = time.monotonic()
                answer = infer(client, "dense", rows(200 + seed))
                assert time.monotonic() - started < 1.0  # one 50 ms timeout at most
                assert answer.as_numpy("OUTPUT0").shape == (1, 16)
            assert np.array_equal(infer(client, "dense", data).as_numpy("OUTPUT0"), expected)
            assert metrics(url)[("cinfer_cache_errors", "dense")] >= 1
        finally:
            proc.send_signal(signal.SIGCONT)
        # Redis answers again: the cache is used again, and that is said once.
        wait_until(
            lambda: (
                "response cache: Redis at" in server_log(root)
                and "answers again" in (infer(client, "dense", data) and server_log(root))
            ),
            "the cache to come back",
        )
        log = server_log(root)
        assert log.count("failed (") == 1 and log.count("answers again") == 1, log
        client.close()


def test_a_hit_writes_its_outputs_into_the_shared_memory_region_asked_for(
    client: httpclient.InferenceServerClient,
) -> None:
    import tritonclient.utils.shared_memory as shm

    data = rows(7)
    # tritonclient drops binary_data from an output it puts in shared memory: the request
    # that stores the entry asks for it as JSON too.
    asked = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)]
    expected = infer(client, "dense", data, outputs=asked).as_numpy("OUTPUT0")  # stored
    handle = shm.create_shared_memory_region("cache-out", f"/cinfer-cache-{id(client)}", 64)
    try:
        client.register_system_shared_memory("cache-out", f"/cinfer-cache-{id(client)}", 64)
        hits = cache_counts(client, "dense")[0]
        wanted = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
        wanted.set_shared_memory("cache-out", 64)
        answer = infer(client, "dense", data, outputs=[wanted]).get_output("OUTPUT0")
        assert answer["parameters"]["shared_memory_region"] == "cache-out"
        assert cache_counts(client, "dense")[0] == hits + 1  # answered from the cache
        got = shm.get_contents_as_numpy(handle, np.float32, [1, 16])
        np.testing.assert_array_equal(got, expected)
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)
