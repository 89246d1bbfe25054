"""Unpacking an uploaded model archive (``.zip`` or ``.tar.gz``) without trusting it.

Every entry is checked before a byte is written: no absolute path, no ``..``, no link, no
device or pipe, no name twice, at most `Limits.files` entries and `Limits.bytes` unpacked
(what the archive declares, and again what is really written, so a zip bomb or a lying header
stops at the limit). The first entry that breaks a rule refuses the whole archive with a
message naming it. Files are written with mode 0644 and folders 0755, whatever the archive
says (no set-uid bits, no world-writable model files). macOS's ``__MACOSX/`` folder and
``.DS_Store`` files are left out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from ..errors import InvalidRequest, show

CHUNK = 1 << 20
SKIPPED = ("__MACOSX",)
SKIPPED_FILES = (".DS_Store",)


@dataclass(frozen=True)
class Limits:
    files: int
    """Entries (files and folders) the archive may hold."""
    bytes: int
    """What its files may hold once unpacked."""


@dataclass(frozen=True)
class Entry:
    """One archive member, as checked."""

    name: PurePosixPath
    folder: bool
    size: int
    member: zipfile.ZipInfo | tarfile.TarInfo


class ArchiveError(InvalidRequest):
    """An archive that is refused: the message names the entry and the rule."""


def unpack(upload: IO[bytes], into: Path, limits: Limits) -> int:
    """Blocking: check the archive `upload` (a seekable binary file) and unpack it into the
    empty folder `into`; the number of files written. Raises ArchiveError; on any error what
    was written is removed."""
    try:
        upload.seek(0)
        if zipfile.is_zipfile(upload):
            upload.seek(0)
            with zipfile.ZipFile(upload) as opened:
                entries = list(_checked(_zip_entries(opened), limits))
                return _write(entries, into, limits, lambda e: _zip_file(opened, e))
        upload.seek(0)
        if _is_tar(upload):
            upload.seek(0)
            with tarfile.open(fileobj=upload, mode="r:*") as tar:
                entries = list(_checked(_tar_entries(tar), limits))
                return _write(entries, into, limits, lambda e: _tar_file(tar, e))
    except ArchiveError:
        _empty(into)
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        _empty(into)
        raise ArchiveError(f"the archive cannot be read: {exc}") from exc
    raise ArchiveError("the upload is neither a .zip nor a .tar.gz archive")


def _is_tar(upload: IO[bytes]) -> bool:
    try:
        with tarfile.open(fileobj=upload, mode="r:*") as tar:
            tar.next()
        return True
    except (tarfile.TarError, EOFError, OSError):
        return False


def _zip_entries(opened: zipfile.ZipFile) -> Iterator[tuple[str, int, bool, int, zipfile.ZipInfo]]:
    for info in opened.infolist():
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if info.is_dir():
            kind = stat.S_IFDIR
        elif kind == 0:  # archivers that record no Unix mode (Windows): a file
            kind = stat.S_IFREG
        yield info.filename, kind, info.is_dir(), info.file_size, info


def _tar_entries(tar: tarfile.TarFile) -> Iterator[tuple[str, int, bool, int, tarfile.TarInfo]]:
    for info in tar:
        if info.isdir():
            kind = stat.S_IFDIR
        elif info.isreg():
            kind = stat.S_IFREG
        elif info.issym() or info.islnk():
            kind = stat.S_IFLNK
        else:
            kind = stat.S_IFCHR
        yield info.name, kind, info.isdir(), info.size, info


def _checked(
    members: Iterator[tuple[str, int, bool, int, zipfile.ZipInfo | tarfile.TarInfo]],
    limits: Limits,
) -> Iterator[Entry]:
    seen: set[PurePosixPath] = set()
    count = total = 0
    for raw, kind, folder, size, member in members:
        name = _name(raw)
        if name is None:
            continue
        if kind == stat.S_IFLNK:
            raise ArchiveError(f"archive entry {show(raw)} is a link: links are not accepted")
        if kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveError(
                f"archive entry {show(raw)} is not a file or folder (a device, pipe or socket)"
            )
        if name in seen and not folder:
            raise ArchiveError(f"archive entry {show(raw)} appears twice")
        seen.add(name)
        count += 1
        if count > limits.files:
            raise ArchiveError(
                f"the archive holds more than {limits.files} files and folders "
                "([repository] max_upload_files)"
            )
        total += size
        if total > limits.bytes:
            raise ArchiveError(
                f"the archive unpacks to more than {_mb(limits.bytes)} (at {show(raw)}; "
                "[repository] max_unpacked_mb)"
            )
        yield Entry(name, folder, size, member)


def _name(raw: str) -> PurePosixPath | None:
    """The entry's relative path, or None for what is left out; refuses unsafe names."""
    if "\x00" in raw or "\\" in raw:
        raise ArchiveError(
            f"archive entry {show(raw)}: a name with a backslash or NUL is not a portable path"
        )
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise ArchiveError(f"archive entry {show(raw)} has an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"archive entry {show(raw)} leaves the folder ('..' in its path)")
    if not parts or parts[0] in SKIPPED or parts[-1] in SKIPPED_FILES:
        return None
    return PurePosixPath(*parts)


def _write(
    entries: list[Entry], into: Path, limits: Limits, opener: Callable[[Entry], IO[bytes]]
) -> int:
    root = into.resolve()
    written = files = 0
    for entry in entries:
        target = root.joinpath(*entry.name.parts)
        if not target.resolve().is_relative_to(root):  # belt and braces: names were checked
            raise ArchiveError(f"archive entry {show(str(entry.name))} leaves the folder")
        if entry.folder:
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
            continue
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if target.is_dir():
            raise ArchiveError(f"archive entry {show(str(entry.name))} is a file and a folder")
        with opener(entry) as source, open(target, "xb") as out:
            os.fchmod(out.fileno(), 0o644)
            while chunk := source.read(CHUNK):
                written += len(chunk)
                if written > limits.bytes:
                    raise ArchiveError(
                        f"the archive unpacks to more than {_mb(limits.bytes)} (at "
                        f"{show(str(entry.name))}, more than its header declares)"
                    )
                out.write(chunk)
        files += 1
    return files


def _zip_file(opened: zipfile.ZipFile, entry: Entry) -> IO[bytes]:
    assert isinstance(entry.member, zipfile.ZipInfo)
    return opened.open(entry.member)


def _tar_file(tar: tarfile.TarFile, entry: Entry) -> IO[bytes]:
    assert isinstance(entry.member, tarfile.TarInfo)
    opened = tar.extractfile(entry.member)
    if opened is None:
        raise ArchiveError(f"archive entry {show(str(entry.name))} cannot be read")
    return opened


def _empty(folder: Path) -> None:
    for child in folder.iterdir() if folder.is_dir() else ():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()


def _mb(count: int) -> str:
    return f"{count / (1 << 20):g} MB"
