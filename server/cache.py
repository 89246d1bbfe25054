"""The response cache: a request a model has answered before is answered again without the
engine (docs/cache.md), from a local LRU or from Redis shared by replicas.

What is kept is the model's answer as the engine (and the classification extension) made it,
not a door's bytes: every door (REST, gRPC, jobs, batch) encodes it as it would a fresh one,
so the request id is echoed, compression and the binary extension follow the request, and
one entry serves them all. Encoding a `tiny` answer is ~2 us of the ~150 us a request costs
here; the engine hand-off a hit skips is most of the rest.

The key is a blake2b digest of the version's namespace (model, version, its model.toml and
files as loaded) and the request's inputs (name, datatype, shape, bytes) and requested
outputs (name, binary, classification); never the id, parameters such as priority, or the
token. The tensors are hashed in place (a buffer view of the array), not copied.

Entries are bytes, the same for both stores: a JSON list of (name, datatype, shape, size)
and the tensors' raw bytes after it; BYTES elements each with a 4-byte length first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import OrderedDict
from hashlib import blake2b
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import orjson
from cachetools import LRUCache

from .counters import CacheStats
from .datatypes import FROM_NUMPY, NUMPY
from .inference import InferRequest
from .reconciler import IN_PLACE
from .settings import CacheSettings

if TYPE_CHECKING:
    from .models import ModelVersion

log = logging.getLogger("cinfer")

ENTRY_OVERHEAD = 96
"""Bytes counted per local entry beyond its key and answer (the dict slot, the objects)."""
RETRY_S = 1.0
"""After a failed Redis call, the cache is skipped for this long (no request waits on a
Redis that is down)."""
MAX_PENDING_STORES = 256
"""Redis stores in flight at once; an answer past it is not stored."""


class Store(Protocol):
    """Where entries live: `LocalStore` or `RedisStore`."""

    async def get(self, key: bytes, stats: CacheStats) -> bytes | None: ...

    def put(self, key: bytes, value: bytes, stats: CacheStats) -> None: ...

    def forget(self, namespace: bytes) -> None: ...

    async def close(self) -> None: ...


class ResponseCache:
    """The server's response cache over one store; the DataPlane asks it for every request
    to a model whose model.toml enables it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._spaces: weakref.WeakKeyDictionary[ModelVersion, bytes] = weakref.WeakKeyDictionary()
        self._described: LRUCache[object, bytes] = LRUCache(256)
        """Request signature (a binary header layout, codec.py) -> its inputs' names,
        datatypes and shapes and its outputs, as hashed: described once per layout."""

    @classmethod
    def of(cls, settings: CacheSettings) -> ResponseCache | None:
        """The cache `[cache]` asks for, or None when it asks for none."""
        if settings.redis_url:
            return cls(
                RedisStore(
                    settings.redis_url, settings.redis_timeout_ms / 1000, settings.redis_ttl_s
                )
            )
        if settings.size_bytes:
            return cls(LocalStore(settings.size_bytes))
        return None

    def namespace(self, found: ModelVersion) -> bytes:
        """The part of every key that says which load of which version answered: a reload
        (new files or a new model.toml) starts a new namespace. Replicas that loaded the
        same files (same sizes and modification times) share it."""
        space = self._spaces.get(found)
        if space is None:
            declared = found.declared or found.config
            config = declared.model_dump(mode="json", exclude=IN_PLACE)  # answers stay
            files = [entry[:3] for entry in found.fingerprint]  # not the inode: per host
            what = orjson.dumps([found.name, found.version, config, files])
            space = self._spaces[found] = blake2b(what, digest_size=12).hexdigest().encode()
        return space

    def key(self, found: ModelVersion, request: InferRequest) -> bytes | None:
        """The request's key, or None when it cannot be cached (a BYTES element that is
        not bytes)."""
        digest = blake2b(digest_size=20)
        update = digest.update
        for tensor in request.inputs:
            array = tensor.array
            if array.dtype.kind == "O":
                for item in array.flat:
                    if type(item) is not bytes:
                        return None
                    update(len(item).to_bytes(4, "little"))
                    update(item)
            else:
                # A view of the array's bytes (a copy only when it is not contiguous).
                update(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        signature = request.signature  # the same names, datatypes, shapes and outputs
        described = self._described.get(signature) if signature is not None else None
        if described is None:
            meta: list[Any] = [(t.name, t.datatype, t.array.shape) for t in request.inputs]
            if request.outputs is None:
                meta.append(("*", request.binary_output))
            else:
                meta.extend((o.name, o.binary, o.classification) for o in request.outputs)
            described = repr(meta).encode()
            if signature is not None:
                self._described[signature] = described
        update(described)
        return self.namespace(found) + b":" + digest.hexdigest().encode()

    async def get(self, found: ModelVersion, key: bytes) -> dict[str, np.ndarray] | None:
        value = await self.store.get(key, found.cache)
        return None if value is None else unpack(value)

    def put(self, found: ModelVersion, key: bytes, results: dict[str, np.ndarray]) -> None:
        value = pack(results)
        if value is not None:
            self.store.put(key, value, found.cache)

    def forget(self, found: ModelVersion) -> None:
        """Drop a retired version's entries (the reconciler calls this on reload or unload)."""
        space = self._spaces.pop(found, None)
        if space is not None:
            self.store.forget(space)

    async def close(self) -> None:
        await self.store.close()


def pack(results: dict[str, np.ndarray]) -> bytes | None:
    """An answer as one entry; None when an output cannot be kept (a BYTES element that is
    not bytes, a dtype without a KServe datatype)."""
    header = []
    blobs: list[bytes | memoryview] = []
    for name, array in results.items():
        if array.dtype.kind == "O":
            parts = []
            for item in array.flat:
                if type(item) is not bytes:
                    return None
                parts.append(len(item).to_bytes(4, "little"))
                parts.append(item)
            blob: bytes | memoryview = b"".join(parts)
            datatype = "BYTES"
        else:
            datatype = FROM_NUMPY.get(array.dtype)  # type: ignore[assignment]
            if datatype is None or datatype == "BYTES":
                return None
            blob = np.ascontiguousarray(array).tobytes()
        header.append((name, datatype, array.shape, len(blob)))
        blobs.append(blob)
    head = orjson.dumps(header)
    return b"".join([len(head).to_bytes(4, "little"), head, *blobs])


def unpack(value: bytes) -> dict[str, np.ndarray]:
    """The answer `pack` kept (read-only arrays over the entry's bytes)."""
    size = int.from_bytes(value[:4], "little")
    offset = 4 + size
    out: dict[str, np.ndarray] = {}
    for name, datatype, shape, length in orjson.loads(value[4:offset]):
        if datatype == "BYTES":
            items = []
            at, end = offset, offset + length
            while at < end:
                n = int.from_bytes(value[at : at + 4], "little")
                items.append(value[at + 4 : at + 4 + n])
                at += 4 + n
            array = np.empty(len(items), dtype=object)
            array[:] = items
            out[name] = array.reshape(shape)
        else:
            dtype = NUMPY[datatype]
            out[name] = np.frombuffer(value, dtype, length // dtype.itemsize, offset).reshape(shape)
        offset += length
    return out


class LocalStore:
    """A least-recently-used map of entries, bounded in bytes (keys, answers and a fixed
    overhead each); an answer larger than the whole cache is not kept.

    The map holds bytes only (key -> answer): bytes are no containers for the garbage
    collector, so a million entries add nothing to its collections (a tuple per entry
    holding the version's counters did, and cost every request of a miss-heavy load)."""

    def __init__(self, size_bytes: int) -> None:
        self.limit = size_bytes
        self.used = 0
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()
        self._spaces: dict[bytes, tuple[CacheStats, set[bytes]]] = {}
        """Namespace -> its version's counters and keys."""

    async def get(self, key: bytes, stats: CacheStats) -> bytes | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: bytes, stats: CacheStats) -> None:
        size = len(key) + len(value) + ENTRY_OVERHEAD
        if size > self.limit:
            return
        entries = self._entries
        if key in entries:
            self._drop(key)
        while self.used + size > self.limit:
            self._drop(next(iter(entries))).evictions += 1
        entries[key] = value
        space = key.partition(b":")[0]
        held = self._spaces.get(space)
        if held is None:
            held = self._spaces[space] = (stats, set())
        held[1].add(key)
        self.used += size
        stats.entries += 1
        stats.bytes += size
        stats.stored_bytes += len(value)

    def _drop(self, key: bytes) -> CacheStats:
        """Remove one entry; the counters of the version it belonged to."""
        size = len(key) + len(self._entries.pop(key)) + ENTRY_OVERHEAD
        space = key.partition(b":")[0]
        stats, keys = self._spaces[space]
        keys.discard(key)
        if not keys:
            del self._spaces[space]
        self.used -= size
        stats.entries -= 1
        stats.bytes -= size
        return stats

    def forget(self, namespace: bytes) -> None:
        held = self._spaces.get(namespace)
        for key in list(held[1]) if held is not None else ():
            self._drop(key)

    async def close(self) -> None:
        self._entries.clear()
        self._spaces.clear()
        self.used = 0


class RedisStore:
    """Entries in Redis (redis-py's asyncio client), under ``cinfer:<namespace>:<digest>``.

    A call that fails or takes longer than `timeout_s` is a miss (counted in the version's
    `errors`): the engines answer, and the store is skipped for `RETRY_S` before it is tried
    again, so a Redis that is down costs one timeout a second, not one per request. Being
    down and coming back are logged once each. Stores run in the background: the answer is
    sent without waiting for Redis."""

    def __init__(self, url: str, timeout_s: float, ttl_s: int) -> None:
        import redis.asyncio as redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self.timeout = timeout_s
        self.ttl = ttl_s or None
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._skip_until = 0.0
        self._down = False
        self._pending: set[asyncio.Task[None]] = set()

    def _usable(self) -> bool:
        return not self._down or time.monotonic() >= self._skip_until

    def _failed(self, stats: CacheStats, exc: BaseException) -> None:
        stats.errors += 1
        self._skip_until = time.monotonic() + RETRY_S
        if not self._down:
            self._down = True
            log.warning(
                "response cache: Redis at %s failed (%s); serving from the engines, "
                "retrying every %.0fs",
                _shown(self.url),
                type(exc).__name__ if isinstance(exc, TimeoutError) else exc,
                RETRY_S,
            )

    def _worked(self) -> None:
        if self._down:
            self._down = False
            log.info("response cache: Redis at %s answers again", _shown(self.url))

    async def get(self, key: bytes, stats: CacheStats) -> bytes | None:
        if not self._usable():
            return None
        try:
            async with asyncio.timeout(self.timeout):
                value = await self.client.get(b"cinfer:" + key)
        except Exception as exc:  # redis.RedisError, OSError, TimeoutError: never the request's
            self._failed(stats, exc)
            return None
        self._worked()
        return value if isinstance(value, bytes) else None

    def put(self, key: bytes, value: bytes, stats: CacheStats) -> None:
        if len(self._pending) >= MAX_PENDING_STORES or not self._usable():
            return
        task = asyncio.get_running_loop().create_task(self._set(key, value, stats))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _set(self, key: bytes, value: bytes, stats: CacheStats) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.client.set(b"cinfer:" + key, value, ex=self.ttl)
        except Exception as exc:
            self._failed(stats, exc)
            return
        stats.stored_bytes += len(value)

    def forget(self, namespace: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._delete(namespace))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _delete(self, namespace: bytes) -> None:
        """Drop a namespace's keys (best effort: an entry left over is never looked up, its
        namespace is gone; the TTL ends it)."""
        try:
            async with asyncio.timeout(max(self.timeout * 100, 5.0)):
                batch = []
                async for key in self.client.scan_iter(match=b"cinfer:" + namespace + b":*"):
                    batch.append(key)
                    if len(batch) >= 500:
                        await self.client.unlink(*batch)
                        batch = []
                if batch:
                    await self.client.unlink(*batch)
        except Exception as exc:
            log.warning("response cache: dropping old entries from Redis failed: %s", exc)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        for task in list(self._pending):
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await self.client.aclose()


def _shown(url: str) -> str:
    """A Redis URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"
