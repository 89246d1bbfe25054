"""Changing the repository from the console and ``/admin/models``: upload a model or its next
version, edit model.toml, publish, unpublish, delete (docs/console.md).

Every change ends as a change of files in the repository, made so that the server never sees
half of it, followed by a reload through the reconciler, the same as when someone copies a
folder in or runs ``git pull``; there is no second way to load a model. So:

- an upload is unpacked and checked in a staging folder (archive.py, staging.py), its
  versions loaded there with their declared engine and asked one inference; only then is it
  renamed into the repository. A failed upload leaves the repository as it was;
- an edit is validated first (errors name the line), then written by a rename; the reload
  swaps when the new version is ready, so a model that fails to load keeps serving;
- a delete moves the folder aside into ``<repository>/.deleted/<time>/``, kept, not
  destroyed; the audit log says where.

Changes to one model are serialised; every one is written to the audit log with who made it
and from where.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .. import configfile
from ..auth.accounts import Accounts
from ..dataplane import DataPlane
from ..errors import CinferError, ConfigError, Conflict, InvalidRequest, ModelLoadError, NotFound
from ..model_config import ModelConfig
from ..repository import MANIFEST, ModelSource, is_model_name, read_model, version_folders
from ..settings import RepositorySettings
from . import archive, staging, toml_text
from .archive import Limits
from .git import WorkTree, work_tree

log = logging.getLogger("cinfer")

DELETED = ".deleted"


@dataclass(frozen=True)
class Actor:
    """Who makes a change, as the audit log names them."""

    name: str
    """A console username, or ``token <name>`` for the admin API."""
    address: str = ""


@dataclass(frozen=True)
class Upload:
    """What an upload published."""

    model: str
    versions: tuple[int, ...]
    files: int
    trials: tuple[staging.Trial, ...]
    served: bool = True
    """False when the model's version_policy does not select the new version."""

    def public(self) -> dict[str, object]:
        return {
            "model": self.model,
            "versions": list(self.versions),
            "files": self.files,
            "checked": [t.describe() for t in self.trials],
            "served": self.served,
        }


@dataclass(frozen=True)
class Edit:
    """What an edit of model.toml did."""

    model: str
    changed: bool
    load_error: str = ""
    """Why the reload failed (what served before still serves); "" when it loaded."""
    git: WorkTree | None = None
    moved_to: str = ""


@dataclass
class Curator:
    """The repository's changes, over the DataPlane's reconciler and the audit log."""

    dataplane: DataPlane
    settings: RepositorySettings
    accounts: Accounts
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _loads: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def root(self) -> Path:
        return self.dataplane.reconciler.root

    @property
    def limits(self) -> Limits:
        mb = 1 << 20
        return Limits(self.settings.max_upload_files, self.settings.max_unpacked_mb * mb)

    @property
    def max_upload_bytes(self) -> int:
        return self.settings.max_upload_mb << 20

    async def start(self) -> None:
        await asyncio.to_thread(staging.sweep, self.root)

    async def stop(self) -> None:
        for task in list(self._loads):
            task.cancel()
        await asyncio.gather(*self._loads, return_exceptions=True)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def folder(self, name: str) -> Path:
        """The model's folder, or 404 when the repository has none of that name."""
        folder = self.root / name
        if not is_model_name(name) or not folder.is_dir():
            raise NotFound(f"no model {name!r} in the repository")
        return folder

    # -- upload -----------------------------------------------------------------------------

    async def add_model(self, name: str, upload: IO[bytes], actor: Actor) -> Upload:
        """Publish an archive of a model folder as the new model `name`."""
        if not is_model_name(name):
            raise InvalidRequest(
                f"model name {name!r}: 1-255 of A-Z a-z 0-9 _ . - and not starting with '.'"
            )
        async with self._lock(name):
            if await asyncio.to_thread((self.root / name).exists):
                raise Conflict(f"model {name!r} exists already: upload a new version of it")
            try:
                result = await asyncio.to_thread(self._stage_model, name, upload)
            except CinferError as exc:
                await self._audit(actor, "model.upload", name, f"refused: {exc.message}")
                raise
        self._load(name)
        trials = "; ".join(t.describe() for t in result.trials)
        await self._audit(actor, "model.upload", name, f"{result.files} files; {trials}")
        return result

    def _stage_model(self, name: str, upload: IO[bytes]) -> Upload:
        with staging.staging_folder(self.root) as folder:
            unpacked = folder / "unpacked"
            unpacked.mkdir()
            files = archive.unpack(upload, unpacked, self.limits)
            staged = folder / name
            staging.model_folder(unpacked).rename(staged)
            with _named(folder):
                source = read_model(folder, name)
                trials = tuple(self._trial(source, v) for v in source.versions)
            target = self.root / name
            if target.exists():  # made by hand while this one was checked
                raise Conflict(f"model {name!r} appeared in the repository meanwhile")
            os.rename(staged, target)
        log.info("model %s: uploaded, published into %s", name, target)
        return Upload(name, tuple(source.versions), files, trials)

    async def add_version(self, name: str, upload: IO[bytes], actor: Actor) -> Upload:
        """Publish an archive of one version folder's files as the model's next version."""
        folder = self.folder(name)
        async with self._lock(name):
            try:
                result = await asyncio.to_thread(self._stage_version, name, folder, upload)
            except CinferError as exc:
                await self._audit(actor, "version.upload", name, f"refused: {exc.message}")
                raise
        self._load(name)
        number = result.versions[0]
        detail = f"version {number}, {result.files} files; {result.trials[0].describe()}"
        if not result.served:
            detail += "; not served: the version_policy does not select it"
        await self._audit(actor, "version.upload", f"{name}/{number}", detail)
        return result

    def _stage_version(self, name: str, model: Path, upload: IO[bytes]) -> Upload:
        manifest = model / MANIFEST
        try:
            data, text = configfile.read(manifest)
            config = configfile.parse(ModelConfig, data, f"{name}/{MANIFEST}", text)
        except ConfigError as exc:
            raise InvalidRequest(
                f"the model's own model.toml is not valid, fix it first: {exc.message}"
            ) from exc
        existing = version_folders(model)
        number = max(existing, default=0) + 1
        with staging.staging_folder(self.root) as folder:
            unpacked = folder / "unpacked"
            unpacked.mkdir()
            files = archive.unpack(upload, unpacked, self.limits)
            staged = folder / name / str(number)
            staged.parent.mkdir()
            shutil.copy2(manifest, staged.parent / MANIFEST)
            staging.version_folder(unpacked).rename(staged)
            source = ModelSource(name, staged.parent, config, {number: staged})
            with _named(folder):
                trial = self._trial(source, number)
            target = model / str(number)
            if target.exists():
                raise Conflict(f"version {number} of {name!r} appeared meanwhile: upload again")
            os.rename(staged, target)
        served = number in config.version_policy.select([*existing, number])
        log.info("model %s: version %d uploaded into %s", name, number, target)
        return Upload(name, (number,), files, (trial,), served)

    @staticmethod
    def _trial(source: ModelSource, version: int) -> staging.Trial:
        try:
            return staging.trial(source, version)
        except ModelLoadError as exc:
            raise InvalidRequest(f"version {version} does not load: {exc}") from exc

    def _load(self, name: str) -> None:
        """Reload `name` now, in the background: the page follows it to READY; in watch mode
        the watcher would too, and finds nothing left to do."""

        async def load() -> None:
            try:
                await self.dataplane.reconciler.load(name)
            except Exception:
                log.exception("model %s: loading it after an upload failed", name)

        task = asyncio.get_running_loop().create_task(load())
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)

    # -- edit, publish, unpublish --------------------------------------------------------------

    async def read_config(self, name: str, missing: str | None = None) -> str:
        """The model's model.toml; `missing` where the folder has none (else 404)."""
        path = self.folder(name) / MANIFEST
        try:
            return await asyncio.to_thread(path.read_text, encoding="utf-8")
        except FileNotFoundError as exc:
            if missing is not None:
                return missing
            raise NotFound(f"model {name!r} has no {MANIFEST}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise NotFound(f"{name}/{MANIFEST} cannot be read: {exc}") from exc

    async def write_config(self, name: str, text: str, actor: Actor) -> Edit:
        """Validate `text` as the model's model.toml, write it and reload the model."""
        folder = self.folder(name)
        source = f"{name}/{MANIFEST}"
        async with self._lock(name):
            try:
                config = toml_text.validate(text, source)
            except CinferError as exc:
                raise InvalidRequest(exc.message) from exc
            available = await asyncio.to_thread(version_folders, folder)
            if config.enabled and not config.version_policy.select(list(available)):
                raise InvalidRequest(
                    f"{source}: version_policy selects none of the versions on disk "
                    f"{sorted(available)}"
                )
            path = folder / MANIFEST
            try:
                old: str | None = await asyncio.to_thread(path.read_text, encoding="utf-8")
            except (OSError, UnicodeDecodeError):  # none yet, or unreadable: replaced
                old = None
            changed = old != text
            if changed:
                await asyncio.to_thread(toml_text.write_atomically, path, text)
            error = ""
            try:
                await self.dataplane.load_model(name, None)
            except CinferError as exc:
                error = exc.message
        detail = "written" if changed else "unchanged"
        await self._audit(actor, "model.edit", name, detail + (f"; {error}" if error else ""))
        git = await asyncio.to_thread(work_tree, folder)
        return Edit(name, changed, error, git)

    async def set_published(self, name: str, published: bool, actor: Actor) -> Edit:
        """``enabled`` in model.toml (toml_text.py), then a reload."""
        folder = self.folder(name)
        verb = "publish" if published else "unpublish"
        async with self._lock(name):
            changed = await toml_text.set_enabled(folder, published)
            error = ""
            try:
                await self.dataplane.load_model(name, None)
            except CinferError as exc:
                error = exc.message
        detail = ("" if published else "enabled = false") + ("" if changed else " (unchanged)")
        if error:
            detail += f"; load failed: {error}"
        await self._audit(actor, f"model.{verb}", name, detail.strip("; "))
        return Edit(name, changed, error)

    # -- delete ---------------------------------------------------------------------------------

    async def delete(self, name: str, version: int | None, actor: Actor) -> Edit:
        """Move the model's folder (or one version's) into .deleted/<time>/ and reload."""
        folder = self.folder(name)
        async with self._lock(name):
            source = folder if version is None else folder / str(version)
            if version is not None and not await asyncio.to_thread(source.is_dir):
                raise NotFound(f"model {name!r} has no version folder {version}")
            place = await asyncio.to_thread(self._move_aside, name, source, version)
            if version is None:
                await self.dataplane.reconciler.reconcile(name)
            else:
                await self.dataplane.reconciler.load(name)
        target = name if version is None else f"{name}/{version}"
        action = "model.delete" if version is None else "version.delete"
        await self._audit(actor, action, target, f"moved to {place}")
        return Edit(name, True, moved_to=str(place))

    def _move_aside(self, name: str, source: Path, version: int | None) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for attempt in range(100):
            bin_ = self.root / DELETED / (stamp if attempt == 0 else f"{stamp}-{attempt}")
            place = bin_ / name if version is None else bin_ / name / str(version)
            if not place.exists():
                break
        place.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, place)
        log.info("model %s: %s moved aside to %s", name, source.name, place)
        return place

    async def _audit(self, actor: Actor, action: str, target: str, detail: str) -> None:
        await self.accounts.audit(actor.name, action, target, detail, actor.address)


class _named:
    """Staging paths in an error read as the archive's own (``iris/model.toml line 3``)."""

    def __init__(self, folder: Path) -> None:
        self.prefix = f"{folder}/"

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        if not isinstance(error, CinferError):
            return
        message = error.message.replace(self.prefix, "")
        if isinstance(error, ConfigError):  # the upload's model.toml or model file: a 400
            raise InvalidRequest(message) from error
        if message != error.message:
            raise type(error)(message) from error
