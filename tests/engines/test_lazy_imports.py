"""A repository of ONNX models never imports torch or openvino (seconds of start-up each)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests import onnx_models
from tests.onnx_models import ROOT

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path

    import httpx

    from server.http.app import create_app
    from server.dataplane import DataPlane
    from server.reconciler import Reconciler
    from server.settings import Settings

    async def main() -> None:
        dataplane = DataPlane(Reconciler(Path(sys.argv[1])))
        app = create_app(Settings(), dataplane)
        async with app.running():
            await dataplane.wait_ready()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                index = (await client.post("/v2/repository/index")).json()
        print([e["state"] for e in index])
        print(sorted({m.split(".")[0] for m in sys.modules} & {"torch", "openvino"}))

    asyncio.run(main())
    """
)


def test_an_onnx_only_repository_imports_neither_torch_nor_openvino(repo: Path) -> None:
    onnx_models.copy_samples(repo)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(repo)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    states, heavy = done.stdout.strip().splitlines()
    assert states == "['READY', 'READY']"
    assert heavy == "[]"


def test_a_torch_model_does_import_torch(repo: Path) -> None:
    """The check above can see an import: the same script over a torch sample finds torch."""
    import shutil

    shutil.copytree(onnx_models.SAMPLES / "digits_torch", repo / "digits_torch")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(repo)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    states, heavy = done.stdout.strip().splitlines()
    assert states == "['READY']"
    assert heavy == "['torch']"


def test_a_missing_engine_says_which_extra_installs_it() -> None:
    blocked = (
        "import sys; sys.modules['torch'] = None\n"  # import torch now fails as if uninstalled
        "from server.engines import engine_class\n"
        "from server.errors import ConfigError\n"
        "try:\n"
        "    engine_class('torch')\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("engine 'torch' is not installed (")
    assert done.stdout.strip().endswith("; pip install 'cinfer[torch]'")
