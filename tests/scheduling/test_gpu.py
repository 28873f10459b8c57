"""The NVML probe: devices and per-process memory, and degrading to CPU-only."""

from __future__ import annotations

import sys
import types

import pytest

from localserve.scheduling.gpu import NvmlGpuProbe

MiB = 1024**2


def test_nvml_probe_degrades_to_cpu_without_a_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml

    def no_driver() -> None:
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    probe = NvmlGpuProbe()
    assert probe.gpus() == []
    assert probe.process_vram(1234) == 0


def test_nvml_probe_reads_devices_and_per_process_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real probe against a stand-in for the NVML library (no NVIDIA driver here)."""
    devices = [
        {
            "name": b"Fake A100",
            "total": 80 * 1024 * MiB,
            "free": 70 * 1024 * MiB,
            "util": 30,
            "procs": [(4242, 2 * 1024 * MiB), (1, 5 * MiB)],
        },
        {
            "name": "Fake T4",
            "total": 16 * 1024 * MiB,
            "free": 1024 * MiB,
            "util": 99,
            "procs": [(4242, 512 * MiB)],
        },
    ]
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=lambda index: devices[index],
        nvmlDeviceGetMemoryInfo=lambda d: types.SimpleNamespace(total=d["total"], free=d["free"]),
        nvmlDeviceGetName=lambda d: d["name"],
        nvmlDeviceGetUtilizationRates=lambda d: types.SimpleNamespace(gpu=d["util"]),
        nvmlDeviceGetComputeRunningProcesses=lambda d: [
            types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in d["procs"]
        ],
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    probe = NvmlGpuProbe()
    found = probe.gpus()
    assert [g.name for g in found] == ["Fake A100", "Fake T4"]
    assert found[0].used == 10 * 1024 * MiB and found[1].utilization == 99
    assert probe.process_vram(4242) == 2 * 1024 * MiB + 512 * MiB
    assert probe.process_vram(999) == 0
