"""System shared memory: tensors that local clients pass through POSIX shared-memory
segments instead of the request body (Triton's `systemsharedmemory` extension; what
`tritonclient.utils.shared_memory` creates).

A client creates a segment (``shm_open(key)``, so ``/dev/shm/<key>`` on Linux), registers a
region of it under a name (the key, an offset into the segment and a byte size), then names
the region in an input's or output's parameters instead of sending bytes. An input's bytes
are copied out of the region when its request is decoded (the client may reuse the region
at once); an output's bytes are written into the region when its answer is encoded.

Every access is checked against the real segment: the region must lie inside the segment,
and an input's or output's offset and size inside the region. A region is mapped while it
is registered and unmapped on unregister and at shutdown; a request that reaches a region
unregistered meanwhile gets a 400 naming it, never a read or write outside a mapping. The
registry is shared by the doors (HTTP and gRPC) through the DataPlane.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest, NotFound, show

SEGMENTS = "/dev/shm"
"""Where Linux keeps POSIX shared-memory segments (shm_open's files)."""
KEY = re.compile(r"^/?[^/\x00]{1,250}$")
"""A POSIX shared-memory name: one leading slash at most, no other slash."""


@dataclass(frozen=True, slots=True)
class Status:
    name: str
    key: str
    offset: int
    byte_size: int

    def answer(self) -> dict[str, object]:
        return {"name": self.name, "key": self.key, "offset": self.offset,
                "byte_size": self.byte_size}  # fmt: skip


class Region:
    """One registered region: its segment mapped, its bounds, and a lock that keeps an
    unregister from unmapping it under a read or a write."""

    def __init__(self, status: Status, segment: mmap.mmap) -> None:
        self.status = status
        self._segment = segment
        self._lock = threading.Lock()
        self._closed = False

    def _span(self, offset: int, size: int, what: str) -> int:
        """The segment offset of `size` bytes at `offset` in the region, or a 400."""
        region = self.status
        if offset < 0 or size < 0 or offset + size > region.byte_size:
            raise InvalidRequest(
                f"{what}: {size} bytes at offset {offset} do not fit in shared memory region "
                f"'{region.name}' ({region.byte_size} bytes)"
            )
        return region.offset + offset

    def read(self, offset: int, size: int, what: str) -> bytes:
        """A copy of `size` bytes at `offset` in the region (for `what`: the input)."""
        start = self._span(offset, size, what)
        with self._lock:
            if self._closed:
                raise _gone(self.status.name, what)
            return self._segment[start : start + size]

    def write(self, offset: int, data: bytes | memoryview, what: str) -> None:
        """Write `data` at `offset` in the region (for `what`: the output)."""
        size = memoryview(data).nbytes
        start = self._span(offset, size, what)
        with self._lock:
            if self._closed:
                raise _gone(self.status.name, what)
            self._segment[start : start + size] = data

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._segment.close()


@dataclass(frozen=True, slots=True)
class Placement:
    """An output's place in a region (inference.OutputPlace): its offset and byte size."""

    area: Region
    offset: int
    byte_size: int
    what: str
    """The output, for messages: "output 'OUTPUT0'"."""

    @property
    def region(self) -> str:
        return self.area.status.name

    def write(self, data: bytes | memoryview) -> int:
        size = memoryview(data).nbytes
        if size > self.byte_size:
            raise InvalidRequest(
                f"{self.what}: {size} bytes do not fit in the {self.byte_size} bytes given "
                f"in shared memory region '{self.region}' (shared_memory_byte_size)"
            )
        self.area.write(self.offset, data, self.what)
        return size


def _gone(name: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"{what}: shared memory region '{name}' was unregistered")


class Regions:
    """The server's registered regions by name."""

    def __init__(self, folder: str = SEGMENTS) -> None:
        self.folder = folder
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Blocking (it opens and maps the segment): register `byte_size` bytes at `offset`
        of segment `key` as region `name`; a 400 naming what does not fit."""
        if not name:
            raise InvalidRequest("a shared memory region needs a name")
        if not KEY.match(key):
            raise InvalidRequest(
                f"shared memory region '{name}': key {key!r} is not a POSIX shared memory "
                "name (like /input0: one leading slash, no other)"
            )
        if offset < 0 or byte_size <= 0:
            raise InvalidRequest(
                f"shared memory region '{name}': offset must be >= 0 and byte_size > 0 "
                f"(got offset {offset}, byte_size {byte_size})"
            )
        with self._lock:
            if name in self._regions:
                raise InvalidRequest(
                    f"shared memory region '{name}' is already registered (unregister it first)"
                )
        path = os.path.join(self.folder, key.lstrip("/"))
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise InvalidRequest(
                f"shared memory region '{name}': no shared memory segment {key!r} on this "
                "host (create it first, e.g. tritonclient.utils.shared_memory."
                "create_shared_memory_region)"
            ) from None
        except (OSError, ValueError) as exc:  # ValueError: a name the OS cannot take
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise InvalidRequest(
                f"shared memory region '{name}': segment {key!r} cannot be opened: {reason}"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise InvalidRequest(
                    f"shared memory region '{name}': offset {offset} + byte_size {byte_size} "
                    f"runs past the end of segment {key!r} ({size} bytes)"
                )
            try:
                segment = mmap.mmap(fd, size)
            except (OSError, ValueError) as exc:
                raise InvalidRequest(
                    f"shared memory region '{name}': segment {key!r} cannot be mapped: {exc}"
                ) from None
        finally:
            os.close(fd)
        region = Region(Status(name, key, offset, byte_size), segment)
        with self._lock:
            if name in self._regions:  # registered meanwhile by another request
                region.close()
                raise InvalidRequest(
                    f"shared memory region '{name}' is already registered (unregister it first)"
                )
            self._regions[name] = region

    def unregister(self, name: str | None) -> None:
        """Unregister one region (a name that is not registered is fine, as for Triton), or
        every region (None)."""
        with self._lock:
            if name is None:
                gone = list(self._regions.values())
                self._regions.clear()
            else:
                found = self._regions.pop(name, None)
                gone = [found] if found is not None else []
        for region in gone:
            region.close()

    def status(self, name: str | None) -> list[dict[str, object]]:
        """Every region, or the one named (404 when it is not registered)."""
        with self._lock:
            if name is None:
                return [r.status.answer() for r in self._regions.values()]
            region = self._regions.get(name)
        if region is None:
            raise NotFound(f"shared memory region '{name}' is not registered")
        return [region.status.answer()]

    def get(self, name: str, what: str) -> Region:
        """The region `what` (an input or output) names, or a 400."""
        region = self._regions.get(name)
        if region is None:
            raise InvalidRequest(f"{what}: shared memory region '{name}' is not registered")
        return region

    def close(self) -> None:
        self.unregister(None)


def locate(
    regions: Regions | None, parameters: dict[str, Any], path: str, what: str
) -> tuple[Region, int, int]:
    """A tensor's shared-memory parameters (`path`: where they are in the request, `what`:
    the tensor): the region, the offset in it and the byte size; a 400 naming the bad one."""
    name = parameters["shared_memory_region"]
    size = parameters.get("shared_memory_byte_size")
    offset = parameters.get("shared_memory_offset", 0)
    if type(name) is not str or not name:
        raise _expected(path, "shared_memory_region", "a region's name", name)
    if type(size) is not int or size < 0:  # bool is not a size
        raise _expected(path, "shared_memory_byte_size", "a non-negative integer", size)
    if type(offset) is not int or offset < 0:
        raise _expected(path, "shared_memory_offset", "a non-negative integer", offset)
    if regions is None:
        raise InvalidRequest(
            f"{what}: shared memory regions cannot be used here (a job stores its tensors)"
        )
    return regions.get(name, what), offset, size


def _expected(path: str, key: str, expected: str, got: object) -> InvalidRequest:
    return InvalidRequest(f"{path}.parameters.{key}: expected {expected}, got {show(got)}")
