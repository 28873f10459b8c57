"""Replicas in the scheduler, on fake runners: the autoscaler adds a replica while
requests wait, a request goes to the replica holding its prompt's prefix, an idle
replica leaves after its keep-alive and is evicted before any model, and /api/ps rows
show every replica."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

from test_scheduler import FakeGpus, MiB, World, budget_for, spec

from localserve.scheduling.scheduler import Lease, ModelSpec

SYSTEM = "You are a careful assistant who answers briefly. " * 30  # several prompt blocks


def replicated(name: str, count: int, mib: int = 100) -> ModelSpec:
    return dataclasses.replace(spec(name, mib=mib), max_replicas=count)


async def take(world: World, wanted: ModelSpec, prompt: str | None = None) -> Lease:
    lease = await world.scheduler.acquire(wanted, None, None, prompt)
    lease.runner.active += 1  # type: ignore[attr-defined]
    return lease


def events(world: World, kind: str) -> list[dict[str, Any]]:
    return [e for e in world.log if e["type"] == kind]


async def flood(world: World, wanted: ModelSpec, count: int) -> list[Lease]:
    """`count` requests on a model with one slot per runner (the runner queue grows),
    then wait until every replica the autoscaler added serves."""
    leases = [await take(world, wanted, f"question {i}") for i in range(count)]
    await serving(world)
    return leases


async def serving(world: World) -> None:
    """Wait (bounded) until no runner of any model is still loading."""
    for _ in range(500):
        await world.settle()
        if not any(m.loading for m in world.scheduler.models.values()):
            return
        await asyncio.sleep(0.002)
    raise AssertionError("a replica never finished loading")


async def test_a_replica_is_added_while_requests_queue_and_it_fits(tmp_path: Path) -> None:
    world = World(tmp_path, scale_queue=3)
    wanted = replicated("a", 2)
    leases = await flood(world, wanted, 4)
    await world.settle()
    assert len(world.scheduler.models) == 2  # "a:latest" and "a:latest#1"
    (scaled,) = events(world, "scaled_up")
    assert scaled["replica"] == 1 and "waiting" in scaled["reason"]
    # the next request goes to the new, idle replica
    extra = await take(world, wanted, "another question")
    assert extra.model.replica == 1
    for lease in [*leases, extra]:
        world.release(lease)
    assert world.violations == []


async def test_no_replica_past_max_replicas(tmp_path: Path) -> None:
    world = World(tmp_path, scale_queue=2)
    leases = await flood(world, replicated("a", 1), 6)
    await world.settle()
    assert len(world.scheduler.models) == 1 and not events(world, "scaled_up")
    for lease in leases:
        world.release(lease)


async def test_no_replica_when_it_would_evict_another_model(tmp_path: Path) -> None:
    world = World(tmp_path, scale_queue=2, max_ram_bytes=budget_for(100, 100))
    await world.use(spec("other"))  # idle, evictable: a replica must not push it out
    leases = await flood(world, replicated("a", 2), 4)
    await world.settle()
    assert world.loaded() == {"a", "other"} and len(world.scheduler.models) == 2
    assert not events(world, "scaled_up")
    for lease in leases:
        world.release(lease)


async def test_a_request_goes_to_the_replica_holding_its_prompt_prefix(tmp_path: Path) -> None:
    world = World(tmp_path, scale_queue=2)
    wanted = replicated("a", 2)
    first = await take(world, wanted, SYSTEM + "user: first")
    others = [await take(world, wanted, f"unrelated {i}") for i in range(2)]
    await serving(world)
    assert len(world.scheduler.models) == 2
    follow_up = await take(world, wanted, SYSTEM + "user: a follow-up question")
    # replica 0 is busier, but it holds the shared system prompt
    assert follow_up.model is first.model and first.model.replica == 0
    cold = await take(world, wanted, "nothing shared")
    assert cold.model.replica == 1  # no prefix anywhere: the least busy
    for lease in [first, *others, follow_up, cold]:
        world.release(lease)


async def test_an_idle_replica_leaves_after_its_keep_alive(tmp_path: Path) -> None:
    world = World(tmp_path, scale_queue=2, keep_alive_s=0.05)
    leases = await flood(world, replicated("a", 2), 3)
    await world.settle()
    assert len(world.scheduler.models) == 2
    for lease in leases:
        world.release(lease)
    for _ in range(200):
        await world.settle()
        if not world.scheduler.models:
            break
        await asyncio.sleep(0.01)
    assert events(world, "scaled_down")
    assert world.unloads("keep_alive") or world.unloads("expired")


async def test_eviction_takes_an_idle_extra_replica_before_any_model(tmp_path: Path) -> None:
    world = World(tmp_path, scale_queue=2, max_ram_bytes=budget_for(100, 100, 100))
    await world.use(spec("old"))  # least recently used
    leases = await flood(world, replicated("a", 2), 3)
    await world.settle()
    assert len(world.scheduler.models) == 3
    for lease in leases:
        world.release(lease)
    await world.settle()
    await world.use(spec("new"))  # needs one model's room
    victims = [e for e in world.log if e["type"] == "unloaded" and e["reason"] == "evicted"]
    assert len(victims) == 1 and victims[0]["model"].startswith("a")
    assert world.loaded() == {"a", "old", "new"}


async def test_the_snapshot_has_one_row_per_model_listing_its_replicas(tmp_path: Path) -> None:
    world = World(tmp_path, scale_queue=2)
    leases = await flood(world, replicated("a", 2), 3)
    await world.settle()
    (row,) = world.scheduler.snapshot()
    assert [r["replica"] for r in row["replicas"]] == [0, 1]
    assert row["in_flight"] == 3 and row["slots"] == 2
    assert row["size"] >= 2 * 100 * MiB
    for lease in leases:
        world.release(lease)


async def test_unloading_a_model_unloads_every_replica(tmp_path: Path) -> None:
    world = World(tmp_path, scale_queue=2)
    wanted = replicated("a", 2)
    leases = await flood(world, wanted, 3)
    await world.settle()
    for lease in leases:
        world.release(lease)
    await world.settle()
    assert await world.scheduler.unload(wanted.name) is True
    await world.settle()
    assert world.scheduler.models == {}


async def test_cpu_replicas_get_disjoint_cpu_sets(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    world = World(tmp_path, scale_queue=2, cpu_replicas=True)
    leases = await flood(world, replicated("a", 2), 3)
    await world.settle()
    sets = [m.cpus for m in world.scheduler.models.values()]
    args = [r.load_args for r in world.runners if r.load_args]
    if len(cpus) >= 2:
        assert not set(sets[0]) & set(sets[1])
    assert sorted(c for s in sets for c in s) == sorted(cpus * (1 if len(cpus) >= 2 else 2))
    assert all(a["num_threads"] == len(a["cpus"]) for a in args)
    for lease in leases:
        world.release(lease)


async def test_with_two_gpus_the_replica_goes_to_the_gpu_with_room(tmp_path: Path) -> None:
    """A fake probe with two GPUs, each with room for one copy of the model: the first
    runner fills GPU 0, the replica the autoscaler adds is planned on GPU 1."""
    world = World(tmp_path, gpus=FakeGpus(256 + 1100, 256 + 1100), scale_queue=2)
    leases = [await take(world, replicated("a", 2, mib=1000), f"q{i}") for i in range(3)]
    await serving(world)
    plans = {m.replica: m.per_gpu for m in world.scheduler.models.values()}
    assert set(plans) == {0, 1}
    assert plans[0][0] > 0 and (len(plans[0]) < 2 or plans[0][1] == 0)
    assert plans[1][0] == 0 and plans[1][1] > 0
    for lease in leases:
        world.release(lease)


async def test_min_replicas_start_when_the_model_loads(tmp_path: Path) -> None:
    world = World(tmp_path)
    wanted = dataclasses.replace(replicated("a", 3), min_replicas=2)
    lease = await take(world, wanted, "one request, nothing waiting")
    await serving(world)
    assert sorted(m.replica for m in world.scheduler.models.values()) == [0, 1]
    (scaled,) = events(world, "scaled_up")
    assert "min_replicas" in scaled["reason"]
    world.release(lease)
