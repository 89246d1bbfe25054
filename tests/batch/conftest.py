from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import onnx_models
from tests.live import free_port

BATCHED = 'engine = "onnxruntime"\nmax_batch_size = 4\n[batching]\n'


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository: `identity` (FP32 [-1, 3], max_batch_size 4, batching: answers each row
    with itself), `whole` (FP32 [3], no batch dim), `add_sub` (two inputs), the `mnist`
    sample (image files in, labels out) and `tight` (its queue holds one request)."""
    root = tmp_path_factory.mktemp("batch") / "repository"
    onnx_models.identity(root / "identity" / "1" / "model.onnx", "FP32", ["batch", 3])
    (root / "identity" / "model.toml").write_text(BATCHED)
    onnx_models.identity(root / "whole" / "1" / "model.onnx", "FP32", [3])
    (root / "whole" / "model.toml").write_text('engine = "onnxruntime"\nmax_batch_size = 0\n')
    onnx_models.add_sub(root / "add_sub" / "1" / "model.onnx", width=2)
    (root / "add_sub" / "model.toml").write_text(BATCHED)
    shutil.copytree(onnx_models.SAMPLES / "mnist", root / "mnist")
    # One request queued at most: concurrent clients get 503s to try again.
    onnx_models.slow(root / "tight" / "1" / "model.onnx", width=512, layers=256)  # ~4 ms a row
    (root / "tight" / "model.toml").write_text(
        'engine = "onnxruntime"\nmax_batch_size = 1\n[batching]\nmax_queue_size = 1\n'
    )
    return root


@pytest.fixture(autouse=True)
def _logging() -> Iterator[None]:
    # The command sets up logging on the runner's stderr, which is closed once it returns.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _postgres_bin() -> Path | None:
    """Where initdb and pg_ctl are: on the PATH, or Debian's versioned folder."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(folders[-1]).parent if folders else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free port: its URL (trust authentication, on
    127.0.0.1 only). As root (CI) the server runs as the `postgres` user, as it must."""
    folder = _postgres_bin()
    if folder is None:
        pytest.skip("PostgreSQL is not installed (initdb not found; make test-system installs it)")
    base = Path(tempfile.mkdtemp(prefix="cinfer-pg-"))
    data, port = base / "data", free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]

    def run(*argv: str) -> None:
        subprocess.run([*prefix, *argv], check=True, capture_output=True, timeout=120)

    run(str(folder / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(folder / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w",
        "start")  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            run(str(folder / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)
