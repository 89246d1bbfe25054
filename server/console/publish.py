"""Publish and unpublish from the console: ``enabled = false`` written into the model's
model.toml (so git shows it and a restart keeps it), then the model reloaded through the
DataPlane. Unpublishing keeps the folder, its files and its history; nothing of the model is
served until it is published again, which takes the line out.

The file is changed as text, its comments and layout kept: the top-level ``enabled`` line is
replaced, added as the first line, or removed. The result is checked as a model.toml before
it is written, and written atomically (a temporary file beside it, then a rename).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
import tomllib
from pathlib import Path

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


def check(text: str, path: Path) -> None:
    try:
        ModelConfig.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: the changed file would not be valid: {exc}") from exc


def write_atomically(path: Path, text: str) -> None:
    """Blocking: `text` into `path` by a rename, so no reader ever sees half of it."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, path.stat().st_mode & 0o777)
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
        check(changed, path)
        write_atomically(path, changed)
        return True

    return await asyncio.to_thread(change)
