"""The model repository on disk: which model folders exist and what each declares.

    repository/
      iris/
        model.toml
        1/model.onnx
        2/model.onnx

Entries starting with "." are ignored (so ``cp -r m repository/.m.tmp && mv ...`` publishes
atomically); so are non-numeric folders inside a model, with a warning. Reading a model is a
pure function of the files, so it can be called again for one model at any time.
"""

from __future__ import annotations

import logging
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from . import configfile
from .errors import ConfigError
from .model_config import ModelConfig

log = logging.getLogger("cinfer")

# ASCII, and at most 255 characters: a longer name is no folder name on Linux (NAME_MAX), and
# asking for one used to fail with OSError 36 and a 500 (issue 12, finding 4).
MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
MANIFEST = "model.toml"

Fingerprint = tuple[tuple[str, int, int, int], ...]
"""(relative path, size, mtime_ns, inode) of every file a version is loaded from."""


@dataclass(frozen=True)
class ModelSource:
    """One model folder as found on disk: its config and the version folders it selects."""

    name: str
    folder: Path
    config: ModelConfig
    versions: dict[int, Path]
    """Selected version -> version folder, by the model's version_policy."""


def is_model_name(name: str) -> bool:
    """A name the repository serves: 1-255 of [A-Za-z0-9_.-], not hidden (so not "." or "..")."""
    return bool(MODEL_NAME.fullmatch(name)) and not name.startswith(".")


def list_models(root: Path) -> list[str]:
    """Names of the model folders in `root`, sorted; hidden and invalid names are skipped."""
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError as exc:
        raise ConfigError(f"model repository {root} does not exist") from exc
    except NotADirectoryError as exc:
        raise ConfigError(f"model repository {root} is not a folder") from exc
    names = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if not MODEL_NAME.fullmatch(entry.name):
            log.warning("ignoring folder %s: model names are [A-Za-z0-9_.-]+", entry)
            continue
        names.append(entry.name)
    return names


def read_model(root: Path, name: str) -> ModelSource:
    """Read `root/name/model.toml` and select its versions; raises ConfigError naming the file."""
    if not MODEL_NAME.fullmatch(name):
        raise ConfigError(f"invalid model name {name!r}: model names are [A-Za-z0-9_.-]+")
    folder = root / name
    if not folder.is_dir():
        raise ConfigError(f"no model folder {folder}")
    manifest = folder / MANIFEST
    data, text = configfile.read(manifest)
    config = configfile.parse(ModelConfig, data, str(manifest), text)
    available = version_folders(folder)
    if not available:
        raise ConfigError(f"{folder}: no numeric version folder (expected {folder}/1/...)")
    selected = config.version_policy.select(list(available))
    if not selected:
        raise ConfigError(
            f"{manifest}: version_policy selects none of the versions on disk {sorted(available)}"
        )
    return ModelSource(name, folder, config, {v: available[v] for v in selected})


def version_folders(folder: Path) -> dict[int, Path]:
    """Numeric subfolders of a model folder; other folders are ignored with a warning."""
    found: dict[int, Path] = {}
    for entry in folder.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.name.isdigit() and entry.name.isascii():
            found[int(entry.name)] = entry
        else:
            log.warning("ignoring folder %s: version folders are numeric", entry)
    return found


def fingerprint(source: ModelSource, version: int) -> Fingerprint:
    """What a loaded version depends on besides model.toml: the files of its version folder
    and the model folder's other files (labels and the like). Equal fingerprints mean no file
    was written, replaced or removed since; hidden entries do not count."""
    entries: list[tuple[str, int, int, int]] = []
    folders = [(source.versions[version], False), (source.folder, True)]
    for top, shallow in folders:
        for path in sorted(top.iterdir()) if shallow else sorted(top.rglob("*")):
            relative = path.relative_to(source.folder)
            if any(part.startswith(".") for part in relative.parts) or path.name == MANIFEST:
                continue
            try:
                info = path.stat()
            except FileNotFoundError:  # removed while we looked: its event reloads again
                continue
            if stat.S_ISREG(info.st_mode):
                entries.append((str(relative), info.st_size, info.st_mtime_ns, info.st_ino))
    return tuple(entries)


def read_versions(
    root: Path, name: str, instances: int | None = None
) -> tuple[ModelSource, dict[int, Fingerprint]]:
    """Blocking: model.toml (with `instances` over its own, as `cinfer batch --instances`
    asks), the versions it selects and their files' fingerprints."""
    source = read_model(root, name)
    if instances is not None:
        source = replace(source, config=source.config.model_copy(update={"instances": instances}))
    return source, {number: fingerprint(source, number) for number in source.versions}
