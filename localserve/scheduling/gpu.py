"""GPUs: what VRAM is free (NVML through nvidia-ml-py) and how many layers to offload.

`GpuProbe` is the small interface the scheduler uses. `NvmlGpuProbe` is the real one; on
a machine without an NVIDIA driver it reports no GPUs (CPU only, no error). Tests use a
fake probe. `plan_offload` picks the number of layers from the GGUF's per-layer tensor
sizes, the KV cache for the context and the free VRAM (minus a reserve).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from localserve.store.gguf_facts import ModelFacts, estimate_kv_cache_bytes

log = logging.getLogger("localserve.scheduling.gpu")
# Scratch space llama.cpp allocates on a GPU that holds any layer (compute graph buffers).
GPU_COMPUTE_BYTES = 256 * 1024**2


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


@dataclass(frozen=True)
class OffloadPlan:
    """How a model splits between GPUs and RAM."""

    layers: int  # llama.cpp's n_gpu_layers (block_count + 1 = everything incl. output)
    total_layers: int
    vram_bytes: int  # total over GPUs
    ram_bytes: int
    per_gpu: tuple[int, ...] = ()  # bytes placed on each GPU, in probe order

    @property
    def full(self) -> bool:
        return self.layers >= self.total_layers


def model_footprint(facts: ModelFacts, num_ctx: int) -> tuple[list[int], int, int]:
    """(bytes per repeating layer incl. its KV cache, output-layer bytes, other bytes)."""
    blocks = max(facts.block_count, 1)
    kv_per_layer = estimate_kv_cache_bytes(facts, num_ctx) // blocks
    layers = [size + kv_per_layer for size in facts.layer_bytes] or [0]
    # The output layer (output.weight and its norm) is offloaded last; token embeddings
    # stay in RAM in llama.cpp. Without a per-tensor split we treat the non-layer tensors
    # as the output layer, which overestimates VRAM slightly (safe side).
    return layers, facts.output_bytes, 0


def plan_offload(
    facts: ModelFacts,
    num_ctx: int,
    gpus: list[GpuInfo],
    *,
    reserve_bytes: int,
    requested_layers: int | None = None,
    vram_cap: int | None = None,
    compute_overhead: int = 64 * 1024**2,
) -> OffloadPlan:
    """Choose how many layers go to the GPUs.

    `requested_layers` (Ollama's options.num_gpu) overrides the choice; otherwise layers
    are placed greedily, GPU by GPU, while each GPU's free memory minus the reserve (and
    a compute buffer) holds them; the output layer goes last, once all layers fit.
    """
    layers, output_bytes, _ = model_footprint(facts, num_ctx)
    total_layers = len(layers) + 1
    weights_total = sum(layers) + output_bytes + compute_overhead
    if not gpus:
        # CPU only: nothing goes to VRAM (a CPU build of llama.cpp ignores num_gpu).
        passed = 0 if requested_layers is None else max(0, min(requested_layers, total_layers))
        return OffloadPlan(passed, total_layers, 0, weights_total)
    budgets = [max(0, g.free - reserve_bytes - GPU_COMPUTE_BYTES) for g in gpus]
    if vram_cap is not None:
        remaining_cap = max(0, vram_cap - GPU_COMPUTE_BYTES * len(budgets))
        capped = []
        for budget in budgets:
            take = min(budget, remaining_cap)
            capped.append(take)
            remaining_cap -= take
        budgets = capped
    limit = total_layers
    if requested_layers is not None:
        limit = max(0, min(requested_layers, total_layers))
    # llama.cpp offloads the last n repeating layers, then the output layer once all of
    # them are on a GPU; fill the GPUs in that order.
    pieces = [*layers, output_bytes]
    order = [*range(len(layers) - 1, -1, -1), len(layers)]
    placed = [0] * len(budgets)
    count = 0
    gpu = 0
    for layer_index in order:
        if count >= limit:
            break
        size = pieces[layer_index]
        while gpu < len(budgets) and placed[gpu] + size > budgets[gpu]:
            gpu += 1
        if gpu >= len(budgets):
            if requested_layers is None:
                break
            gpu = len(budgets) - 1  # the user asked for these layers: place them anyway
        placed[gpu] += size
        count += 1
    used = tuple(p + (GPU_COMPUTE_BYTES if p else 0) for p in placed)
    return OffloadPlan(count, total_layers, sum(used), max(0, weights_total - sum(placed)), used)
