"""The files of the jobs' large inputs and results, in the folder beside their database.

A payload up to ``[jobs] inline_bytes`` stays in the database row; a larger one is a file
named ``<job id>.<input|result>``, written atomically (a temporary name, fsync, rename, fsync
of the folder) before the row that names it is committed (store.py). A file no row names (a
crash between the two, or between a delete and the unlink) is swept at the next open. All
file work runs off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable
from pathlib import Path


class Payloads:
    """The folder of one jobs database's large payloads."""

    def __init__(self, folder: Path, inline_bytes: int) -> None:
        self.folder = folder
        self.inline_bytes = inline_bytes

    async def open(self, named: set[str]) -> int:
        """Create the folder; remove the files not in `named`; how many were."""
        await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)
        return await asyncio.to_thread(_sweep, self.folder, named)

    async def keep(self, job_id: str, kind: str, body: bytes) -> tuple[bytes | None, str | None]:
        """(inline bytes, None) for a small payload; (None, file name) once a large one is
        durably in its file."""
        if len(body) <= self.inline_bytes:
            return body, None
        name = f"{job_id}.{kind}"
        await asyncio.to_thread(_write_atomically, self.folder, name, body)
        return None, name

    async def read(self, name: str) -> bytes:
        return await asyncio.to_thread((self.folder / name).read_bytes)

    async def remove(self, names: Iterable[str | None]) -> None:
        files = [name for name in names if name is not None]
        if files:
            await asyncio.to_thread(_remove, self.folder, files)


def _write_atomically(folder: Path, name: str, data: bytes) -> None:
    """`folder/name` holds `data` completely or not at all, through a crash or a power cut."""
    temporary = folder / f".{name}.tmp"
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, folder / name)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # the rename itself
    finally:
        os.close(descriptor)


def _remove(folder: Path, names: Iterable[str]) -> None:
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()


def _sweep(folder: Path, named: set[str]) -> int:
    """Remove the files in `folder` that no payload row names (temporary ones included)."""
    removed = 0
    for path in folder.iterdir():
        if path.is_file() and path.name not in named:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed
