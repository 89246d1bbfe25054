"""The dashboard's GPU readings (server/console/gpus.py, and live.py's samples of them) from
NVML's answers.

This machine has no GPU and no NVIDIA driver, so NVML here is `FakeNVML`: an object with the
few ``pynvml`` functions gpus.py calls, passed in the way `Live(nvml=...)` and
`GPUs.open(nvml)` take one. It stands in for the driver's answers only; what it checks is
how those answers become the sample's fields, the dashboard's series and its devices list,
and that NVML is shut down. The real NVML path runs in tests/console/test_live.py's GPU test,
on a machine with a GPU.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from server.console.gpus import GPUs
from server.console.live import Live
from server.reconciler import Reconciler

pytestmark = pytest.mark.anyio

GIB = 2**30


class FakeNVMLError(Exception):
    """pynvml.NVMLError's stand-in."""


@dataclass
class Utilization:
    gpu: int
    memory: int


@dataclass
class Memory:
    total: int
    free: int
    used: int


class FakeNVML:
    """A fake NVML, for a machine without a GPU: `gpus` are (name, total bytes, used bytes,
    utilisation %); `broken` lists the GPUs whose readings fail; `init_error` fails nvmlInit."""

    NVMLError = FakeNVMLError

    def __init__(self, gpus: list[tuple[str, int, int, int]], init_error: bool = False) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.broken: set[int] = set()
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self.gpus[handle][0]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Memory:
        self._answer(handle)
        _, total, used, _ = self.gpus[handle]
        return Memory(total=total, free=total - used, used=used)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Utilization:
        self._answer(handle)
        return Utilization(gpu=self.gpus[handle][3], memory=0)

    def _answer(self, handle: int) -> None:
        if handle in self.broken:
            raise FakeNVMLError("GPU is lost")


TWO = [("NVIDIA H200", 141 * GIB, 3 * GIB + GIB // 4, 37), ("NVIDIA L4", 24 * GIB, 0, 0)]


def test_readings_become_sample_fields_series_and_device_names() -> None:
    nvml = FakeNVML(TWO)
    gpus = GPUs.open(nvml)
    assert gpus is not None
    assert gpus.devices() == ["GPU 0: NVIDIA H200, 141.0 GiB", "GPU 1: NVIDIA L4, 24.0 GiB"]
    assert gpus.read() == {
        "gpu0_percent": 37.0, "gpu0_used_gib": 3.25, "gpu0_total_gib": 141.0,
        "gpu1_percent": 0.0, "gpu1_used_gib": 0.0, "gpu1_total_gib": 24.0,
    }  # fmt: skip
    charts = [(c.title, c.series, c.labels) for c in gpus.charts()]
    assert charts == [
        ("GPU utilisation (%)", "gpu0_percent,gpu1_percent", "GPU 0,GPU 1"),
        ("GPU memory used (GiB)", "gpu0_used_gib,gpu1_used_gib", "GPU 0,GPU 1"),
    ]
    gpus.close()
    gpus.close()
    assert nvml.calls == ["init", "shutdown"]  # once, however often it is closed
    assert gpus.read() == {}  # nothing is asked of NVML after its shutdown


def test_a_gpu_that_stops_answering_is_a_gap_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nvml = FakeNVML(TWO)
    gpus = GPUs.open(nvml)
    assert gpus is not None
    nvml.broken.add(0)
    with caplog.at_level(logging.WARNING, "cinfer"):
        for _ in range(3):
            assert set(gpus.read()) == {"gpu1_percent", "gpu1_used_gib", "gpu1_total_gib"}
    assert [r.getMessage() for r in caplog.records] == [
        "console: GPU 0 did not answer NVML (GPU is lost)"
    ]
    nvml.broken.clear()
    assert gpus.read()["gpu0_percent"] == 37.0
    gpus.close()


def test_without_nvml_or_a_gpu_sampling_is_off_after_one_debug_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing, empty = FakeNVML(TWO, init_error=True), FakeNVML([])
    with caplog.at_level(logging.DEBUG, "cinfer"):
        assert GPUs.open(failing) is None
        assert GPUs.open(empty) is None
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "console: no GPU charts: NVML did not start (NVML Shared Library Not Found)"),
        ("DEBUG", "console: no GPU charts: NVML lists no GPU"),
    ]
    assert failing.calls == ["init"]
    assert empty.calls == ["init", "shutdown"]  # what was started is shut down


async def test_live_samples_carry_each_gpus_fields_and_stop_shuts_nvml_down(
    tmp_path: Path,
) -> None:
    nvml = FakeNVML(TWO[:1])
    live = Live(Reconciler(tmp_path), interval=0.01, nvml=nvml)
    await live.start()
    try:
        deadline = time.monotonic() + 30
        while not live.history:  # the sampler's first tick
            assert time.monotonic() < deadline, "no sample in 30 s"
            await asyncio.sleep(0.01)
        stream = live.events(duration=0)
        assert (await anext(stream)).startswith(b"retry: ")
        event = await anext(stream)
        assert event.startswith(b"event: history\ndata: ")
        first = orjson.loads(event.split(b"data: ", 1)[1])[0]
        assert first["gpu0_percent"] == 37.0 and first["gpu0_used_gib"] == 3.25
        assert first["gpu0_total_gib"] == 141.0 and "gpus" not in first
        assert "cpu_percent" in first and "queues" in first
    finally:
        await live.stop()
    assert nvml.calls == ["init", "shutdown"]
    assert live.gpus is None
