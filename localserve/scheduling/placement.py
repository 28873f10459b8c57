"""Placement maths, as pure functions: the RAM budget, the GPU offload choice, and which
idle models to evict to make room for a load or to give RAM back.

Nothing here reads a probe, a clock or the scheduler: the scheduler passes what is loaded
(anything shaped like `Placed`), what the request wants (`Wanted`) and one `Resources`
reading of the machine, and acts on the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from localserve.config import Settings
from localserve.errors import ModelTooLargeError
from localserve.runner.embed import embed_batch
from localserve.scheduling.gpu import GpuInfo
from localserve.store.gguf_facts import (
    ModelFacts,
    estimate_embedding_context_bytes,
    estimate_kv_cache_bytes,
)

# A runner's RAM beyond its tensors and KV cache (llama.cpp's CPU compute buffers).
COMPUTE_OVERHEAD_BYTES = 64 * 1024**2
# Scratch space llama.cpp allocates on a GPU that holds any layer (compute graph buffers).
GPU_COMPUTE_BYTES = 256 * 1024**2


class Wanted(Protocol):
    """What placement reads of a request's model (`scheduler.ModelSpec`)."""

    @property
    def key(self) -> str: ...

    @property
    def facts(self) -> ModelFacts: ...

    @property
    def num_ctx(self) -> int: ...

    @property
    def num_gpu(self) -> int | None: ...

    @property
    def num_parallel(self) -> int: ...


class Placed(Protocol):
    """What placement reads of a loaded model (`scheduler.LoadedModel`)."""

    @property
    def size(self) -> int: ...  # RAM bytes held

    @property
    def vram(self) -> int: ...  # VRAM bytes held, over all GPUs

    @property
    def per_gpu(self) -> tuple[int, ...]: ...  # planned VRAM bytes per GPU

    @property
    def loading(self) -> bool: ...  # no runner yet: its memory is not allocated

    @property
    def idle(self) -> bool: ...  # may be evicted

    @property
    def pinned(self) -> bool: ...  # evicted last

    @property
    def last_used(self) -> float: ...  # monotonic

    @property
    def extra_replica(self) -> bool: ...  # a replica the autoscaler added: evicted first


M = TypeVar("M", bound=Placed)


@dataclass(frozen=True)
class Limits:
    """The caps and reserves of the settings that placement applies."""

    max_ram_bytes: int | None = None
    ram_reserve_bytes: int = 0
    max_vram_bytes: int | None = None
    vram_reserve_bytes: int = 0
    max_loaded: int = 0  # 0: no cap

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            max_ram_bytes=settings.max_ram_bytes,
            ram_reserve_bytes=settings.ram_reserve_bytes,
            max_vram_bytes=settings.max_vram_bytes,
            vram_reserve_bytes=settings.vram_reserve_bytes,
            max_loaded=settings.max_loaded,
        )


@dataclass(frozen=True)
class Resources:
    """One reading of the machine for a placement decision."""

    limits: Limits
    gpus: tuple[GpuInfo, ...] = ()  # as NVML reports them (other programs' use included)
    available_ram: int = 0  # psutil's; not read when `limits.max_ram_bytes` is set
    stopping_bytes: int = 0  # RAM still held by runners that are exiting


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


# ---- GPU offload -------------------------------------------------------------------------


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
    gpus: Sequence[GpuInfo],
    *,
    reserve_bytes: int,
    requested_layers: int | None = None,
    vram_cap: int | None = None,
    compute_overhead: int = COMPUTE_OVERHEAD_BYTES,
) -> OffloadPlan:
    """Choose how many layers go to the GPUs.

    `requested_layers` (Ollama's options.num_gpu) overrides the choice; otherwise layers
    are placed greedily, GPU by GPU, while each GPU's free memory minus the reserve (and
    a compute buffer) holds them; the output layer goes last, once all layers fit.
    """
    layers, output_bytes, _ = model_footprint(facts, num_ctx)
    total_layers = len(layers) + 1
    weights_total = sum(layers) + output_bytes + compute_overhead
    if facts.pooling:
        # An embedding model gets an embedding context on its first request; counted in
        # RAM from the start. (A generation model asked for embeddings grows by the same
        # amount later: its measured RSS, which the memory watcher reads, shows it.)
        weights_total += estimate_embedding_context_bytes(
            facts, num_ctx, embed_batch(1 if gpus else 0)
        )
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


def tensor_split(plan: OffloadPlan | None) -> list[float] | None:
    """llama.cpp's tensor_split for a multi-GPU plan (proportions per GPU)."""
    if plan is None or len(plan.per_gpu) < 2 or not sum(plan.per_gpu):
        return None
    total = sum(plan.per_gpu)
    return [amount / total for amount in plan.per_gpu]


def gpu_room(
    gpus: Sequence[GpuInfo], models: Iterable[Placed], returned: Sequence[Placed]
) -> list[GpuInfo]:
    """GPUs as seen by a new load: free memory after our own models' allocations.

    Our models' VRAM is counted from their plans (a loading model has not allocated
    yet; NVML would not show it), other programs' use from NVML. `returned` models'
    VRAM is counted as free (they are about to be evicted).
    """
    ours_all = [0] * len(gpus)
    ours_allocated = [0] * len(gpus)
    for model in models:
        for index, amount in enumerate(model.per_gpu[: len(gpus)]):
            if model not in returned:
                ours_all[index] += amount
            if not model.loading:
                ours_allocated[index] += amount
    room = []
    for index, info in enumerate(gpus):
        others = max(0, info.used - ours_allocated[index])
        free = max(0, info.total - others - ours_all[index])
        room.append(GpuInfo(info.index, info.name, info.total, free, info.utilization))
    return room


def choose_offload(
    spec: Wanted, models: Sequence[Placed], returned: Sequence[Placed], resources: Resources
) -> OffloadPlan:
    """The GPU split for `spec` once `returned` models are gone."""
    limits = resources.limits
    held_vram = sum(m.vram for m in models if m not in returned)
    cap = None
    if limits.max_vram_bytes is not None:
        cap = max(0, limits.max_vram_bytes - held_vram)
    return plan_offload(
        spec.facts,
        spec.num_ctx * spec.num_parallel,
        gpu_room(resources.gpus, models, returned),
        reserve_bytes=limits.vram_reserve_bytes,
        requested_layers=spec.num_gpu,
        vram_cap=cap,
        compute_overhead=COMPUTE_OVERHEAD_BYTES,
    )


# ---- RAM and eviction ----------------------------------------------------------------------


def ram_budget(models: Iterable[Placed], resources: Resources) -> tuple[int, int]:
    """(RAM bytes available for new models now, RAM bytes our models hold)."""
    models = list(models)
    limits = resources.limits
    held = sum(m.size for m in models) + resources.stopping_bytes
    if limits.max_ram_bytes is not None:
        return limits.max_ram_bytes - held, held
    loading = sum(m.size for m in models if m.loading)  # not in psutil's numbers yet
    return resources.available_ram - limits.ram_reserve_bytes - loading, held


def eviction_order(models: Iterable[M]) -> list[M]:
    """The idle models, first to go first: extra replicas (the model stays loaded in
    another runner), then least recently used, pinned ones last."""
    return sorted(
        (m for m in models if m.idle), key=lambda m: (m.pinned, not m.extra_replica, m.last_used)
    )


def plan_room(
    spec: Wanted, models: Sequence[M], resources: Resources
) -> tuple[list[M], OffloadPlan] | None:
    """The idle models to evict and the GPU split for `spec`, or None to wait.

    Raises ModelTooLargeError when the model cannot fit even with nothing else loaded.
    """
    candidates = eviction_order(models)
    victims: list[M] = []
    plan = choose_offload(spec, models, victims, resources)
    # Prefer a full GPU offload: evict idle models holding VRAM while that helps.
    if not plan.full and spec.num_gpu is None and any(m.vram for m in candidates):
        best_case = choose_offload(spec, models, [m for m in candidates if m.vram], resources)
        if best_case.layers > plan.layers:
            for victim in [m for m in candidates if m.vram]:
                victims.append(victim)
                plan = choose_offload(spec, models, victims, resources)
                if plan.full or plan.layers >= best_case.layers:
                    break
    need = plan.ram_bytes
    free, held = ram_budget(models, resources)
    free += sum(v.size for v in victims)
    best_ram = choose_offload(spec, models, models, resources).ram_bytes
    if best_ram > free + held - sum(v.size for v in victims):
        budget = free + held - sum(v.size for v in victims)
        raise ModelTooLargeError(
            f"model {spec.key} needs about {best_ram / 2**20:.0f} MiB of RAM but the "
            f"memory budget is {max(budget, 0) / 2**20:.0f} MiB"
        )
    remaining = [m for m in candidates if m not in victims]
    count = len(models) - len(victims)
    cap = resources.limits.max_loaded
    while free < need or (cap and count >= cap):
        if not remaining:
            return None
        victim = remaining.pop(0)
        victims.append(victim)
        free += victim.size
        count -= 1
    return victims, plan


def reclaim_victims(models: Iterable[M], available: int, reserve: int) -> list[M]:
    """The idle models to unload when other programs pushed available RAM under the
    reserve, in eviction order, until the reserve is met again."""
    victims: list[M] = []
    freed = 0
    for model in eviction_order(models):
        if available + freed >= reserve:
            break
        victims.append(model)
        freed += model.size
    return victims
