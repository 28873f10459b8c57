"""GPUs: what VRAM is free and what each process holds (NVML through nvidia-ml-py).

`GpuProbe` is the small interface the scheduler uses. `NvmlGpuProbe` is the real one; on
a machine without an NVIDIA driver it reports no GPUs (CPU only, no error). Tests use a
fake probe. How many layers to offload is `placement.plan_offload`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("localserve.scheduling.gpu")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total: int
    free: int
    utilization: int = 0  # percent

    @property
    def used(self) -> int:
        return self.total - self.free


class GpuProbe(Protocol):
    def gpus(self) -> list[GpuInfo]: ...

    def process_vram(self, pid: int) -> int: ...


class NoGpuProbe:
    def gpus(self) -> list[GpuInfo]:
        return []

    def process_vram(self, pid: int) -> int:
        return 0


class NvmlGpuProbe:
    """NVIDIA GPUs via NVML; an empty list where no driver or library exists."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml: Any = None
        self._failed = False

    def _library(self) -> Any:
        with self._lock:
            if self._nvml is None and not self._failed:
                try:
                    import pynvml

                    pynvml.nvmlInit()
                    self._nvml = pynvml
                except Exception as exc:
                    log.info("no NVIDIA GPU available (%s); running on CPU", exc)
                    self._failed = True
            return self._nvml

    def gpus(self) -> list[GpuInfo]:
        nvml = self._library()
        if nvml is None:
            return []
        found = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                name = nvml.nvmlDeviceGetName(handle)
                try:
                    utilization = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except Exception:
                    utilization = 0
                found.append(
                    GpuInfo(
                        index=index,
                        name=name.decode() if isinstance(name, bytes) else str(name),
                        total=int(memory.total),
                        free=int(memory.free),
                        utilization=utilization,
                    )
                )
        except Exception as exc:
            log.warning("NVML query failed: %s", exc)
            return []
        return found

    def process_vram(self, pid: int) -> int:
        nvml = self._library()
        if nvml is None:
            return 0
        total = 0
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if process.pid == pid and process.usedGpuMemory:
                        total += int(process.usedGpuMemory)
        except Exception:
            return 0
        return total
