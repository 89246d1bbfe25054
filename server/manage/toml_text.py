"""Changing a model.toml as text, its comments and layout kept, checked before it is written
and written atomically (a temporary file beside it, then a rename).

- Publish and unpublish: ``enabled = false`` written into the file (so git shows it and a
  restart keeps it): the top-level ``enabled`` line is replaced, added as the first line, or
  removed. Unpublishing keeps the folder, its files and its history; nothing of the model is
  served until it is published again, which takes the line out.
- The edit form (description, instances, batching, version policy): the keys set through
  tomlkit, which keeps every other line as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from .. import configfile
from ..errors import ConfigError
from ..model_config import ModelConfig

ENABLED = re.compile(r"^[ \t]*enabled[ \t]*=.*(\n|$)", re.MULTILINE)
TABLE = re.compile(r"^[ \t]*\[", re.MULTILINE)


def with_enabled(text: str, enabled: bool) -> str:
    """`text` (a model.toml) with its top-level ``enabled`` key set for `enabled`: the line
    ``enabled = false`` to unpublish, no line to publish (the default is true)."""
    table = TABLE.search(text)
    top, rest = (text[: table.start()], text[table.start() :]) if table else (text, "")
    top = ENABLED.sub("", top)
    if not enabled:
        top = "enabled = false\n" + top
    return top + rest


def validate(text: str, source: str) -> ModelConfig:
    """`text` as a model.toml, or ConfigError naming `source`, the line and the key."""
    return configfile.parse(ModelConfig, configfile.loads(text, source), source, text)


@dataclass(frozen=True)
class Changes:
    """What the edit form changes (docs/console.md); the rest of the file is kept."""

    description: str
    instances: int
    max_batch_size: int
    batching: dict[str, Any] | None
    """The [batching] keys, or None for no dynamic batching (the table removed)."""
    version_policy: dict[str, Any]
    """One of {"latest": N}, {"all": True}, {"specific": [...]}."""


def with_settings(text: str, changes: Changes) -> str:
    """`text` (a model.toml) with the form's keys set, every other line kept; a key the file
    does not have and the form leaves at its default is not added."""
    try:
        document = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError(f"the current model.toml is not valid TOML: {exc}") from exc
    _put(document, "description", changes.description, "")
    _put(document, "instances", changes.instances, 1)
    _put(document, "max_batch_size", changes.max_batch_size, 0)
    if changes.batching is None:
        document.pop("batching", None)
    else:
        batching = _table(document, "batching")
        for key, value in changes.batching.items():
            _put(batching, key, value, None)
    policy = changes.version_policy
    if "version_policy" in document or policy != {"latest": 1}:
        table = _table(document, "version_policy")
        for key in ("latest", "all", "specific"):
            if key in policy:
                _put(table, key, policy[key], None)
            else:
                table.pop(key, None)
    return tomlkit.dumps(document)


def _table(document: Any, key: str) -> Any:
    table = document.get(key)
    if not isinstance(table, dict):
        table = tomlkit.table()
        document[key] = table
    return table


def _put(table: Any, key: str, value: Any, default: Any) -> None:
    """Set `key` where the file has it or `value` is not the default; an unset value (None)
    removes it."""
    if value is None:
        table.pop(key, None)
    elif key in table:
        if table[key] != value:
            table[key] = value
    elif value != default:
        table[key] = value


def write_atomically(path: Path, text: str) -> None:
    """Blocking: `text` into `path` by a rename, so no reader ever sees half of it."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


async def set_enabled(folder: Path, enabled: bool) -> bool:
    """Write `enabled` into folder/model.toml; whether the file changed."""
    path = folder / "model.toml"

    def change() -> bool:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from exc
        changed = with_enabled(text, enabled)
        if changed == text:
            return False
        validate(changed, str(path))
        write_atomically(path, changed)
        return True

    return await asyncio.to_thread(change)
