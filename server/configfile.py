"""Reading TOML files into pydantic models with errors that name the file, line and key.

Both config.toml and every model.toml go through `parse()`, so a typo anywhere reads the same:
``repository/iris/model.toml line 7: [batching] max_queue_delay: unknown key``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import ConfigError

M = TypeVar("M", bound=BaseModel)

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"']+)\s*=")


def loads(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text; a syntax error names the source (tomllib's message has the line)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc


def read(path: Path) -> tuple[dict[str, Any], str]:
    """Read and parse a TOML file, returning the data and its text (for locating keys)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    return loads(text, str(path)), text


def parse(model: type[M], data: dict[str, Any], source: str, text: str | None = None) -> M:
    """Validate `data` into `model`; the first problems are reported with file, line and key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, source, text)) from exc


def describe(exc: ValidationError, source: str, text: str | None) -> str:
    """One line per pydantic error: ``source line N: [table] key: message``."""
    return explain(exc, lambda loc: where(source, text, loc))


def explain(exc: ValidationError, origin: Callable[[tuple[Any, ...]], str]) -> str:
    """One line per pydantic error, ``<origin(loc)>: [table] key: message``, for data that
    came from more than one place (config.toml, variables and flags: settings.load)."""
    lines = []
    for error in exc.errors()[:5]:
        loc = tuple(error["loc"])
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        if error["type"] not in ("extra_forbidden", "missing") and "input" in error:
            message += f" (got {error['input']!r})"
        lines.append(f"{origin(loc)}: {format_loc(loc)}: {message}")
    more = len(exc.errors()) - len(lines)
    if more > 0:
        lines.append(f"... and {more} more")
    return "; ".join(lines)


def where(source: str, text: str | None, loc: tuple[Any, ...]) -> str:
    """``source line N`` for the key at `loc` in `text`, or `source` where no line is found."""
    line = locate(text, loc) if text else None
    return f"{source} line {line}" if line else source


def format_loc(loc: tuple[Any, ...]) -> str:
    """``('batching', 'max_queue_size')`` -> ``[batching] max_queue_size``.

    List items read as ``[inputs #2]``.
    """
    tables: list[str] = []
    parts = [p for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
    key = None
    for i, part in enumerate(parts):
        if isinstance(part, int):
            if tables:
                tables[-1] = f"{tables[-1]} #{part + 1}"
        elif i == len(parts) - 1:
            key = part
        else:
            tables.append(part)
    prefix = f"[{'.'.join(tables)}] " if tables else ""
    return f"{prefix}{key}" if key is not None else (prefix.strip() or "(root)")


def locate(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number (1-based) of the key at `loc` in TOML `text`."""
    names = [p for p in loc if isinstance(p, str)]
    indexes = [p for p in loc if isinstance(p, int)]
    if not names:
        return None
    table, key = names[:-1], names[-1]
    want_index = indexes[0] if indexes else None
    current: list[str] = []
    seen: dict[str, int] = {}
    table_line = None
    for number, raw in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(raw)
        if header:
            current = [part.strip() for part in header.group(2).split(".")]
            if current == names:  # the key is itself a table: [sever]
                return number
            dotted = ".".join(current)
            seen[dotted] = seen.get(dotted, -1) + 1
            if current == table and (want_index is None or seen[dotted] == want_index):
                table_line = number
            continue
        found = _KEY.match(raw)
        if (
            found
            and found.group(1).strip("\"'") == key
            and current == table
            and (want_index is None or seen.get(".".join(current), 0) == want_index)
        ):
            return number
    if table_line is not None:
        return table_line
    return None
