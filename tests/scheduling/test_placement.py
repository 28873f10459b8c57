"""Placement maths as pure functions: GPU layer choice against fake GPUs, the RAM budget,
eviction order, room planning and reclaiming, on plain stand-ins for loaded models."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from localserve.errors import ModelTooLargeError
from localserve.scheduling.gpu import GpuInfo
from localserve.scheduling.placement import (
    COMPUTE_OVERHEAD_BYTES,
    GPU_COMPUTE_BYTES,
    Limits,
    Resources,
    eviction_order,
    gpu_room,
    plan_offload,
    plan_room,
    ram_budget,
    reclaim_victims,
    tensor_split,
)
from localserve.store.gguf_facts import (
    ModelFacts,
    estimate_embedding_context_bytes,
    estimate_kv_cache_bytes,
)

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


def test_an_embedding_model_counts_its_embedding_context_in_ram() -> None:
    """An embedding model (pooling) gets an embedding context on its first request: the
    plan counts it from the start, growing with the context (its KV cache)."""
    shaped = dict(embedding_length=576, head_count=9, head_count_kv=3, vocab_size=49152)
    generator = dataclasses.replace(facts(), **shaped)
    embedder = dataclasses.replace(generator, pooling=True)
    for num_ctx in (512, 4096):
        extra = estimate_embedding_context_bytes(embedder, num_ctx, 128)
        plain = plan_offload(generator, num_ctx, [], reserve_bytes=0).ram_bytes
        assert plan_offload(embedder, num_ctx, [], reserve_bytes=0).ram_bytes == plain + extra
    assert estimate_embedding_context_bytes(embedder, 4096, 128) > estimate_embedding_context_bytes(
        embedder, 512, 128
    ) + estimate_kv_cache_bytes(embedder, 3584)


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


# ---- RAM budget, eviction and room -------------------------------------------------------


@dataclass(eq=False)
class Model:
    """A stand-in for a loaded model: only what placement reads."""

    name: str
    size: int = 100 * MiB
    vram: int = 0
    per_gpu: tuple[int, ...] = ()
    loading: bool = False
    idle: bool = True
    pinned: bool = False
    last_used: float = 0.0
    extra_replica: bool = False


@dataclass(frozen=True)
class Spec:
    key: str
    facts: ModelFacts
    num_ctx: int = 512
    num_gpu: int | None = None
    num_parallel: int = 1


def spec(mib: int, key: str = "new") -> Spec:
    """A model needing exactly `mib` MiB of tensors (plus the compute overhead)."""
    return Spec(key, facts(layers=2, layer_mib=mib // 2, output_mib=0))


def need(mib: int) -> int:
    return mib * MiB + COMPUTE_OVERHEAD_BYTES


def cap(ram: int, **limits: int) -> Resources:
    return Resources(Limits(max_ram_bytes=ram, **limits))


def test_the_budget_counts_loaded_and_stopping_models_against_the_cap() -> None:
    models = [Model("a", size=300 * MiB), Model("b", size=200 * MiB)]
    resources = Resources(Limits(max_ram_bytes=1000 * MiB), stopping_bytes=100 * MiB)
    assert ram_budget(models, resources) == (400 * MiB, 600 * MiB)


def test_without_a_cap_the_budget_is_available_ram_less_reserve_and_loading_models() -> None:
    """A loading model's memory is not yet in psutil's numbers: it is taken off."""
    models = [Model("ready", size=300 * MiB), Model("loading", size=200 * MiB, loading=True)]
    resources = Resources(Limits(ram_reserve_bytes=100 * MiB), available_ram=1000 * MiB)
    assert ram_budget(models, resources) == (700 * MiB, 500 * MiB)


def test_eviction_order_is_least_recently_used_first_pinned_last_busy_never() -> None:
    old, recent = Model("old", last_used=1), Model("recent", last_used=5)
    pinned, busy = Model("pinned", pinned=True, last_used=0), Model("busy", idle=False)
    assert eviction_order([recent, pinned, busy, old]) == [old, recent, pinned]


def test_room_is_made_by_evicting_the_least_recently_used_idle_model() -> None:
    old, recent = Model("old", last_used=1), Model("recent", last_used=2)
    budget = 2 * 100 * MiB + need(100) - 1  # one model too many
    victims, plan = plan_room(spec(100), [recent, old], cap(budget)) or ([], None)
    assert victims == [old] and plan is not None and plan.ram_bytes == need(100)


def test_no_room_while_the_holder_is_busy_means_wait() -> None:
    assert plan_room(spec(100), [Model("busy", idle=False)], cap(need(100))) is None


def test_a_model_bigger_than_the_whole_budget_is_refused() -> None:
    with pytest.raises(ModelTooLargeError, match=r"needs about .* budget is"):
        plan_room(spec(1000), [Model("a")], cap(500 * MiB))


def test_max_loaded_evicts_even_when_memory_would_do() -> None:
    a, b = Model("a", last_used=1), Model("b", last_used=2)
    room = plan_room(spec(100), [a, b], cap(100_000 * MiB, max_loaded=2))
    assert room is not None and room[0] == [a]


def test_an_idle_model_holding_vram_is_evicted_for_a_full_offload() -> None:
    gpu_free = GPU_COMPUTE_BYTES + 150 * MiB
    holder = Model("holder", vram=100 * MiB, per_gpu=(100 * MiB,))
    resources = Resources(Limits(max_ram_bytes=100_000 * MiB), gpus=(gpu(gpu_free // MiB),))
    room = plan_room(spec(100), [holder], resources)
    assert room is not None
    victims, plan = room
    assert victims == [holder] and plan.full


def test_gpu_room_counts_our_planned_vram_and_frees_what_is_returned() -> None:
    """NVML already counts a loaded model's VRAM (not a loading one's): our plans are
    taken off the free memory once, and returned models' VRAM counts as free."""
    loaded = Model("loaded", per_gpu=(300 * MiB,))
    loading = Model("loading", per_gpu=(200 * MiB,), loading=True)
    nvml = GpuInfo(0, "fake0", total=1000 * MiB, free=700 * MiB)  # `loaded` holds 300
    (room,) = gpu_room([nvml], [loaded, loading], [])
    assert room.free == 500 * MiB
    (room,) = gpu_room([nvml], [loaded, loading], [loaded])
    assert room.free == 800 * MiB


def test_reclaim_unloads_idle_models_until_the_reserve_is_met() -> None:
    old, recent = Model("old", size=300 * MiB, last_used=1), Model("recent", last_used=2)
    busy = Model("busy", idle=False, last_used=0)
    assert reclaim_victims([recent, busy, old], 800 * MiB, 1000 * MiB) == [old]
    assert reclaim_victims([recent, busy, old], 500 * MiB, 1000 * MiB) == [old, recent]
    assert reclaim_victims([recent, busy, old], 1000 * MiB, 1000 * MiB) == []


def test_tensor_split_is_the_share_of_each_gpu() -> None:
    plan = plan_offload(facts(), 2048, [gpu(956, 0), gpu(956, 1)], reserve_bytes=100 * MiB)
    split = tensor_split(plan)
    assert split is not None and len(split) == 2 and abs(sum(split) - 1) < 1e-9
    assert tensor_split(plan_offload(facts(), 2048, [gpu(8000)], reserve_bytes=0)) is None
