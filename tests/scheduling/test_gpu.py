"""GPU layer choice against fake GPUs, and the NVML probe degrading to CPU-only."""

from __future__ import annotations

import sys
import types

import pytest

from localserve.scheduling.gpu import GPU_COMPUTE_BYTES, GpuInfo, NvmlGpuProbe, plan_offload
from localserve.store.gguf_facts import ModelFacts

MiB = 1024**2


def facts(layers: int = 10, layer_mib: int = 100, output_mib: int = 50) -> ModelFacts:
    return ModelFacts(
        architecture="llama",
        parameter_count=1,
        quantization="Q4_0",
        context_length=4096,
        block_count=layers,
        embedding_length=0,  # no KV estimate: sizes are exactly the tensor sizes
        head_count=0,
        head_count_kv=0,
        chat_template=None,
        file_size=0,
        tensor_bytes=layers * layer_mib * MiB + output_mib * MiB,
        layer_bytes=[layer_mib * MiB] * layers,
        output_bytes=output_mib * MiB,
    )


def gpu(free_mib: int, index: int = 0) -> GpuInfo:
    return GpuInfo(index=index, name=f"fake{index}", total=free_mib * MiB, free=free_mib * MiB)


def test_no_gpu_means_everything_in_ram() -> None:
    plan = plan_offload(facts(), 2048, [], reserve_bytes=0)
    assert plan.layers == 0 and plan.vram_bytes == 0
    assert plan.ram_bytes >= 10 * 100 * MiB + 50 * MiB


def test_a_big_gpu_takes_every_layer_and_the_output_layer() -> None:
    plan = plan_offload(facts(), 2048, [gpu(8000)], reserve_bytes=512 * MiB)
    assert plan.full and plan.layers == 11 and plan.total_layers == 11
    assert plan.vram_bytes == 1050 * MiB + GPU_COMPUTE_BYTES


def test_a_small_gpu_gets_as_many_layers_as_fit() -> None:
    free = 450 + 256 + 100  # room for 4 layers after the reserve and compute buffer
    plan = plan_offload(facts(), 2048, [gpu(free)], reserve_bytes=100 * MiB)
    assert plan.layers == 4 and not plan.full
    assert plan.ram_bytes >= 6 * 100 * MiB + 50 * MiB


def test_a_gpu_too_small_for_one_layer_gets_none() -> None:
    plan = plan_offload(facts(), 2048, [gpu(300)], reserve_bytes=100 * MiB)
    assert plan.layers == 0 and plan.vram_bytes == 0


def test_two_gpus_share_the_layers() -> None:
    per_gpu_free = 600 + 256 + 100  # six layers each
    plan = plan_offload(
        facts(), 2048, [gpu(per_gpu_free, 0), gpu(per_gpu_free, 1)], reserve_bytes=100 * MiB
    )
    assert plan.full
    assert len(plan.per_gpu) == 2 and all(amount > 0 for amount in plan.per_gpu)


def test_num_gpu_option_overrides_the_choice() -> None:
    plan = plan_offload(facts(), 2048, [gpu(8000)], reserve_bytes=0, requested_layers=3)
    assert plan.layers == 3
    plan = plan_offload(facts(), 2048, [gpu(8000)], reserve_bytes=0, requested_layers=0)
    assert plan.layers == 0 and plan.vram_bytes == 0


def test_vram_cap_limits_offload() -> None:
    plan = plan_offload(
        facts(), 2048, [gpu(8000)], reserve_bytes=0, vram_cap=GPU_COMPUTE_BYTES + 250 * MiB
    )
    assert plan.layers == 2


def test_kv_cache_counts_against_vram() -> None:
    with_kv = ModelFacts(
        **{**facts().to_dict(), "embedding_length": 4096, "head_count": 32, "head_count_kv": 32}
    )
    small_ctx = plan_offload(with_kv, 512, [gpu(1500)], reserve_bytes=0)
    big_ctx = plan_offload(with_kv, 32768, [gpu(1500)], reserve_bytes=0)
    assert big_ctx.layers < small_ctx.layers


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
