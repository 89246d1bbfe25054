"""The response cache's keys, entries and local store (server/cache.py), in-process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from server.cache import ENTRY_OVERHEAD, LocalStore, ResponseCache, pack, unpack
from server.counters import CacheStats
from server.inference import InferInput, InferRequest, RequestedOutput
from server.model_config import ModelConfig
from server.models import ModelVersion

CONFIG = ModelConfig(engine="onnxruntime", max_batch_size=8, cache={"enabled": True})


def version(number: int = 1, config: ModelConfig = CONFIG) -> ModelVersion:
    return ModelVersion("m", number, Path("/nowhere"), config, declared=config)


def request(
    array: np.ndarray,
    datatype: str = "FP32",
    name: str = "INPUT0",
    outputs: list[RequestedOutput] | None = None,
    **kwargs: object,
) -> InferRequest:
    return InferRequest([InferInput(name, datatype, array)], outputs, **kwargs)  # type: ignore[arg-type]


def test_the_key_is_what_the_answer_depends_on() -> None:
    cache = ResponseCache(LocalStore(1 << 20))
    found = version()
    data = np.arange(4, dtype=np.float32).reshape(1, 4)
    base = cache.key(found, request(data))
    assert base is not None
    # Not the id, the request parameters or whether the bytes came as JSON or binary.
    same = [
        request(data.copy(), id="a"),
        request(data, parameters={"priority": 1}),
        request(np.frombuffer(data.tobytes(), np.float32).reshape(1, 4)),
    ]
    assert all(cache.key(found, r) == base for r in same)
    changed = data.copy()
    changed.view(np.uint8)[0, 0] ^= 1  # one bit of one byte
    different = [
        request(changed),
        request(data.view(np.int32), "INT32"),  # the same bytes as another datatype
        request(data.reshape(2, 2)),  # ... another shape
        request(data, name="INPUT1"),
        request(data, outputs=[RequestedOutput("OUTPUT0")]),
        request(data, outputs=[RequestedOutput("OUTPUT0", binary=True)]),
        request(data, outputs=[RequestedOutput("OUTPUT0", classification=2)]),
        request(data, binary_output=True),
    ]
    keys = [cache.key(found, r) for r in different]
    assert len({base, *keys}) == len(keys) + 1
    assert cache.key(version(2), request(data)) != base  # another version
    assert cache.key(version(1), request(data)) == base  # the same load elsewhere: shared


def test_a_new_model_file_or_model_toml_is_a_new_namespace() -> None:
    cache = ResponseCache(LocalStore(1 << 20))
    first = version()
    first.fingerprint = (("1/model.onnx", 10, 111, 5),)
    moved = version()
    moved.fingerprint = (("1/model.onnx", 10, 111, 6),)  # another inode: another host's copy
    rewritten = version()
    rewritten.fingerprint = (("1/model.onnx", 10, 222, 5),)
    reconfigured = version(config=CONFIG.model_copy(update={"max_batch_size": 4}))
    resized = version(config=CONFIG.model_copy(update={"instances": 3}))  # the same answers
    resized.fingerprint = first.fingerprint
    assert cache.namespace(first) == cache.namespace(moved) == cache.namespace(resized)
    assert cache.namespace(rewritten) != cache.namespace(first)
    assert cache.namespace(reconfigured) != cache.namespace(first)


def test_bytes_keys_and_non_bytes_elements() -> None:
    cache = ResponseCache(LocalStore(1 << 20))
    found = version()
    one = np.array([b"ab", b"c"], dtype=object)
    two = np.array([b"a", b"bc"], dtype=object)  # the same bytes joined: not the same tensor
    assert cache.key(found, request(one, "BYTES")) != cache.key(found, request(two, "BYTES"))
    assert cache.key(found, request(np.array(["text"], dtype=object), "BYTES")) is None


def test_entries_keep_every_datatype() -> None:
    results = {
        "f": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([True, False]),
        "h": np.arange(3, dtype=ml_dtypes.bfloat16),
        "s": np.array([[b"0.9:1:one", b""]], dtype=object),
        "u": np.array(7, dtype=np.uint64),
    }
    value = pack(results)
    assert value is not None
    back = unpack(value)
    assert list(back) == list(results)
    for name, array in results.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        assert back[name].tolist() == array.tolist()
    assert pack({"x": np.array(["str"], dtype=object)}) is None


def test_local_store_evicts_the_least_recently_used_within_its_bytes() -> None:
    async def run() -> None:
        entry = b"x" * 100
        size = len(b"ns:k0") + len(entry) + ENTRY_OVERHEAD
        store = LocalStore(3 * size)
        stats = CacheStats()
        for i in range(3):
            store.put(f"ns:k{i}".encode(), entry, stats)
        assert await store.get(b"ns:k0", stats) == entry  # k0 is now the most recent
        store.put(b"ns:k3", entry, stats)
        assert await store.get(b"ns:k1", stats) is None
        assert await store.get(b"ns:k0", stats) == entry
        assert (stats.evictions, stats.entries, stats.bytes) == (1, 3, 3 * size)
        assert store.used <= store.limit
        store.put(b"ns:big", b"x" * (4 * size), stats)  # larger than the cache: not kept
        assert await store.get(b"ns:big", stats) is None
        other = CacheStats()
        store.put(b"other:k", entry, other)
        store.forget(b"ns")
        assert (stats.entries, stats.bytes, other.entries) == (0, 0, 1)
        assert await store.get(b"other:k", other) == entry

    asyncio.run(run())


@pytest.mark.parametrize("url", ["redis://:secret@host:6379/0", "redis://host"])
def test_redis_urls_are_logged_without_the_password(url: str) -> None:
    from server.cache import _shown

    assert "secret" not in _shown(url) and _shown(url).endswith(url.rpartition("@")[2])
