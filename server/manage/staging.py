"""The staging area: where an uploaded model is unpacked, loaded and asked one inference before
anything of it reaches the repository.

    repository/.staging/<id>/           hidden: neither the watcher nor the index sees it
      unpacked/                         the archive, as checked by archive.py
      <model>/model.toml, <model>/<N>/  the folder that is renamed into the repository

It is inside the repository so the rename that publishes is atomic (one filesystem), and each
upload has its own folder, removed when the upload ends however it ends; what a crash left
behind is removed at the next start.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..datatypes import FROM_NUMPY
from ..errors import CinferError, ModelLoadError
from ..models import open_engine, serving, warmup_inputs
from ..repository import ModelSource
from .archive import ArchiveError

log = logging.getLogger("cinfer")

STAGING = ".staging"
STALE_S = 3600.0
"""A staging folder this old at start-up was left by a crash (an upload never takes this
long to check): it is removed."""
TOO_MANY = "a model archive is one model folder (model.toml and numeric version folders such "


@dataclass(frozen=True)
class Trial:
    """What a staged version did: it loaded on `device` and answered one inference."""

    version: int
    device: str
    outputs: dict[str, tuple[str, tuple[int, ...]]]
    """Output name -> (datatype, shape) of the test inference's answer."""
    seconds: float

    def describe(self) -> str:
        shown = ", ".join(f"{n} {d} {list(s)}" for n, (d, s) in self.outputs.items())
        return (
            f"version {self.version} loaded on {self.device} and answered one inference "
            f"({shown}) in {self.seconds:.2f} s"
        )


@contextlib.contextmanager
def staging_folder(root: Path) -> Iterator[Path]:
    """Blocking: a new, empty staging folder for one upload; removed on exit."""
    folder = root / STAGING / uuid.uuid4().hex
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        tidy(root)


def tidy(root: Path) -> None:
    """Blocking: remove the staging area once no upload uses it, so a refused upload leaves
    the repository exactly as it was."""
    with contextlib.suppress(OSError):
        (root / STAGING).rmdir()


def sweep(root: Path) -> None:
    """Blocking: remove staging folders a crash left (older than `STALE_S`)."""
    staging = root / STAGING
    if not staging.is_dir():
        return
    now = time.time()
    for folder in staging.iterdir():
        with contextlib.suppress(OSError):
            if now - folder.stat().st_mtime > STALE_S:
                shutil.rmtree(folder, ignore_errors=True)
                log.info("removed %s, an upload's staging folder left by a crash", folder)


def model_folder(unpacked: Path) -> Path:
    """The model folder in an unpacked model archive: model.toml at its top, or in its one
    folder (``iris.zip`` holding ``iris/model.toml``)."""
    if (unpacked / "model.toml").is_file():
        return unpacked
    children = list(unpacked.iterdir())
    if len(children) == 1 and (children[0] / "model.toml").is_file():
        return children[0]
    raise ArchiveError(
        TOO_MANY + "as 1/model.onnx), at its top or in one folder; this one has no model.toml "
        f"there (it holds {_names(children)})"
    )


def version_folder(unpacked: Path) -> Path:
    """The version's files in an unpacked version archive: at its top, or in its one folder
    (``3/model.onnx``)."""
    children = list(unpacked.iterdir())
    folder = children[0] if len(children) == 1 and children[0].is_dir() else unpacked
    if (folder / "model.toml").exists():
        raise ArchiveError(
            "a version archive holds one version folder's files (such as model.onnx); "
            "model.toml belongs to the model: change it on the model's page or with "
            "PUT /admin/models/{model}/config"
        )
    if not any(folder.iterdir()):
        raise ArchiveError("the archive holds no files")
    return folder


def trial(source: ModelSource, version: int) -> Trial:
    """Blocking: load `version` of the staged `source` with its declared engine (one
    instance), run one inference on inputs made from its schema, check the answer against the
    declared outputs, and close it. Raises ModelLoadError with the reason."""
    started = time.perf_counter()
    staged = replace(source, config=source.config.model_copy(update={"instances": 1}))
    engine, effective = open_engine(staged, version)
    try:
        serving(staged, effective)  # [images] and [labels] fit the model file
        names = [t.name for t in effective.outputs or ()]
        try:
            answer = engine.run(0, warmup_inputs(effective), names)
        except CinferError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"the test inference failed: {exc}") from exc
        outputs: dict[str, tuple[str, tuple[int, ...]]] = {}
        for spec in effective.outputs or ():
            array = answer.get(spec.name)
            if array is None:
                raise ModelLoadError(f"the test inference returned no output {spec.name!r}")
            array = np.asarray(array)
            got = "BYTES" if array.dtype.kind in "OSU" else FROM_NUMPY.get(array.dtype)
            if got != spec.datatype:
                raise ModelLoadError(
                    f"the test inference returned output {spec.name!r} as {got or array.dtype}"
                    f", but it is declared {spec.datatype}"
                )
            outputs[spec.name] = (spec.datatype, tuple(array.shape))
    finally:
        engine.close()
    return Trial(version, effective.device, outputs, time.perf_counter() - started)


def _names(children: list[Path]) -> str:
    if not children:
        return "nothing"
    shown = ", ".join(sorted(c.name + ("/" if c.is_dir() else "") for c in children)[:5])
    return shown + (", ..." if len(children) > 5 else "")
