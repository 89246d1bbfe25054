"""Triton's classification extension: an output asked for with ``"parameters":
{"classification": N}`` answers its top N classes per row as ``"score:index:label"`` strings
(BYTES, shape [rows, N]; ``"score:index"`` where the output has no labels), the score written
as Triton writes it (six decimals).

Labels come from the file model.toml's ``[labels]`` names for the output, in the model folder,
one label per line, class i on line i + 1; they are read when the version loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import InvalidRequest, ModelLoadError
from .model_config import ModelConfig

MAX_LABELS = 1_000_000


def read_labels(config: ModelConfig, folder: Path) -> dict[str, list[str]]:
    """Blocking: each output's labels, from the files `[labels]` names in the model folder;
    a missing file, or an output the model does not have, is a load error naming the key."""
    outputs = {t.name: t for t in config.outputs or ()}
    found: dict[str, list[str]] = {}
    for output, file in config.labels.items():
        if output not in outputs:
            raise ModelLoadError(
                f"labels.{output}: the model has no output {output!r} "
                f"(it has: {', '.join(outputs)})"
            )
        path = folder / file
        try:
            lines = path.read_text(encoding="utf-8").splitlines()[:MAX_LABELS]
        except FileNotFoundError:
            raise ModelLoadError(f"labels.{output}: no file {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"labels.{output}: {path} cannot be read: {exc}") from None
        classes = _classes(outputs[output].shape)
        if classes is not None and len(lines) < classes:
            raise ModelLoadError(
                f"labels.{output}: {path} has {len(lines)} labels, the output {classes} classes"
            )
        found[output] = [line.strip() for line in lines]
    return found


def _classes(shape: tuple[int, ...]) -> int | None:
    if not shape or any(d == -1 for d in shape):
        return None
    return int(np.prod(shape))


def classify(
    name: str, values: np.ndarray, count: int, rows: int, batched: bool, labels: list[str] | None
) -> np.ndarray:
    """The top `count` classes of each row of output `name` as Triton's strings."""
    scores = values.reshape(rows, -1) if batched else values.reshape(1, -1)
    classes = scores.shape[1]
    if count > classes:
        raise InvalidRequest(
            f"output '{name}': classification {count} asks for more classes than its {classes}"
        )
    if scores.dtype.kind not in "fiub":
        raise InvalidRequest(f"output '{name}': classification needs numbers, it is {values.dtype}")
    order = np.argsort(-scores.astype(np.float64), axis=1, kind="stable")[:, :count]
    out = np.empty((scores.shape[0], count), dtype=object)
    for row in range(scores.shape[0]):
        for j, index in enumerate(order[row]):
            text = f"{float(scores[row, index]):f}:{int(index)}"
            if labels is not None and index < len(labels):
                text += f":{labels[index]}"
            out[row, j] = text.encode()
    return out if batched else out.reshape(count)


def requested(parameters: Mapping[str, object] | None, name: str) -> int:
    """The classification count an output's parameters ask for (0: none)."""
    if not parameters or "classification" not in parameters:
        return 0
    count = parameters["classification"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidRequest(
            f"output '{name}': classification must be a whole number of classes from 1, "
            f"got {count!r}"
        )
    return count
