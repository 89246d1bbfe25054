"""The GPUs on the dashboard: each one's name and memory, and in each live sample its
utilisation and memory in use, read through NVML (nvidia-ml-py's ``pynvml``: ctypes over the
driver's libnvidia-ml.so, nothing to build).

`GPUs.open()` calls ``nvmlInit()`` once, at start. Without the package, without the driver's
library, or with no GPU (any CPU-only machine) it gives None after one debug log line, and the
dashboard draws no GPU chart; `close()` calls ``nvmlShutdown()``.

A reading is two NVML queries a GPU (utilisation, memory). They are driver calls, which can
block (a GPU waking up or being reset), so `Live` makes them off the event loop, once a sample.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("cinfer")

GIB = 2**30


@dataclass(frozen=True)
class Chart:
    """A dashboard chart of one series a GPU: what the chart element's data attributes say."""

    title: str
    series: str
    """The sample fields it draws, comma-separated (``gpu0_percent,gpu1_percent``)."""
    labels: str
    """Their legend, in the same order (``GPU 0,GPU 1``)."""


class GPUs:
    """The GPUs NVML lists, opened; `read()` gives a sample's GPU fields."""

    def __init__(self, nvml: Any, handles: list[Any], names: list[str], totals: list[int]) -> None:
        """`nvml`: the ``pynvml`` module (or an object with its functions), initialised."""
        self.nvml = nvml
        self.handles = handles
        self.names = names
        self.totals = totals
        self._lock = threading.Lock()  # close() waits for a reading still running
        self._closed = False
        self._failing: set[int] = set()

    @classmethod
    def open(cls, nvml: Any = None) -> GPUs | None:
        """NVML started and the GPUs it lists; None, logged once at debug, when there is no
        ``pynvml`` (`nvml` None: import it), no driver library, or no GPU it can read."""
        if nvml is None:
            try:
                import pynvml
            except ImportError:
                log.debug("console: no GPU charts: nvidia-ml-py (pynvml) is not installed")
                return None
            nvml = pynvml
        try:
            nvml.nvmlInit()
        except (nvml.NVMLError, OSError) as exc:
            log.debug("console: no GPU charts: NVML did not start (%s)", exc)
            return None
        try:
            count = nvml.nvmlDeviceGetCount()
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            names = [str(nvml.nvmlDeviceGetName(h)) for h in handles]
            totals = [int(nvml.nvmlDeviceGetMemoryInfo(h).total) for h in handles]
        except nvml.NVMLError as exc:
            log.debug("console: no GPU charts: NVML could not list the GPUs (%s)", exc)
            _shutdown(nvml)
            return None
        if not handles:
            log.debug("console: no GPU charts: NVML lists no GPU")
            _shutdown(nvml)
            return None
        return cls(nvml, handles, names, totals)

    def devices(self) -> list[str]:
        """What the dashboard's devices list says of each GPU: its index, name and memory."""
        return [
            f"GPU {i}: {name}, {total / GIB:.1f} GiB"
            for i, (name, total) in enumerate(zip(self.names, self.totals, strict=True))
        ]

    def charts(self) -> list[Chart]:
        """The dashboard's GPU charts: utilisation and memory used, a series per GPU."""
        labels = ",".join(f"GPU {i}" for i in range(len(self.handles)))

        def series(field: str) -> str:
            return ",".join(f"gpu{i}_{field}" for i in range(len(self.handles)))

        return [
            Chart("GPU utilisation (%)", series("percent"), labels),
            # GiB, not the process chart's MiB: a GPU's 80 000 MiB do not fit the axis.
            Chart("GPU memory used (GiB)", series("used_gib"), labels),
        ]

    def read(self) -> dict[str, float]:
        """Each GPU's utilisation (``gpu<i>_percent``: the share of NVML's last sample period,
        1/6 s to 1 s by the GPU, in which a kernel ran) and memory (``gpu<i>_used_gib`` and
        ``gpu<i>_total_gib``). A GPU that does not answer is left out of this sample (a gap
        in its series), and logged once until it answers again."""
        fields: dict[str, float] = {}
        with self._lock:
            if self._closed:
                return fields
            for i, handle in enumerate(self.handles):
                try:
                    rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                    memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                except self.nvml.NVMLError as exc:
                    if i not in self._failing:
                        log.warning("console: GPU %d did not answer NVML (%s)", i, exc)
                        self._failing.add(i)
                    continue
                self._failing.discard(i)
                fields[f"gpu{i}_percent"] = float(rates.gpu)
                fields[f"gpu{i}_used_gib"] = round(memory.used / GIB, 2)
                fields[f"gpu{i}_total_gib"] = round(memory.total / GIB, 2)
        return fields

    def close(self) -> None:
        """``nvmlShutdown()``, once no reading runs any more."""
        with self._lock:
            if not self._closed:
                self._closed = True
                _shutdown(self.nvml)


def _shutdown(nvml: Any) -> None:
    with contextlib.suppress(nvml.NVMLError):
        nvml.nvmlShutdown()
