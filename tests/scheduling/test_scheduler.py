"""Scheduler policy: fast tests with fake runners (no processes) for the decisions, and
real runners with tiny models for the end-to-end behaviour."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import running_daemon
from eventually import eventually_async
from fake_clock import FakeClock
from gguf_factory import write_tiny_gguf
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from localserve.config import Settings
from localserve.errors import BusyError, ModelTooLargeError
from localserve.names import ModelName
from localserve.runner.handle import LoadResult
from localserve.scheduling.gpu import GpuInfo
from localserve.scheduling.placement import COMPUTE_OVERHEAD_BYTES
from localserve.scheduling.scheduler import (
    FOREVER_WALL,
    TRANSITIONS,
    IllegalTransitionError,
    Lease,
    LoadedModel,
    ModelSpec,
    ModelState,
    Scheduler,
)
from localserve.store.gguf_facts import ModelFacts
from localserve.telemetry.events import EventBus

MiB = 1024**2
OVERHEAD_MIB = COMPUTE_OVERHEAD_BYTES // MiB


class FakeRunner:
    """Stands in for a runner process: records loads and stops, checks none is busy."""

    pids = itertools.count(50_000)

    def __init__(self, world: World) -> None:
        self.world = world
        self.pid = next(self.pids)
        self.alive = True
        self.active = 0
        self.rss = 0
        self.threads = 1
        self.load_args: dict[str, Any] = {}
        self._callbacks: list[Any] = []

    async def load(self, path: str, **kwargs: Any) -> LoadResult:
        self.load_args = {"path": path, **kwargs}
        on_progress = kwargs.get("on_progress")
        for progress in (0.0, 0.5, 1.0):
            if on_progress is not None:
                on_progress(progress)
            if self.world.load_gate is not None:  # the test lets each step pass
                await self.world.load_gate.acquire()
            else:
                await asyncio.sleep(self.world.load_step_s)
        return LoadResult(load_duration_ns=1000, rss=0, n_ctx=kwargs["num_ctx"])

    async def refresh_stats(self) -> int:
        return self.rss

    def on_exit(self, callback: Any) -> None:
        self._callbacks.append(callback)

    async def stop(self, timeout: float = 5.0) -> None:
        if self.active:
            self.world.violations.append(f"runner {self.pid} stopped with {self.active} requests")
        self._exit()

    async def kill(self) -> None:
        self._exit()

    def _exit(self) -> None:
        if self.alive:
            self.alive = False
            for callback in self._callbacks:
                callback(self)


class FakeMemory:
    def __init__(self, available: int) -> None:
        self.available = available

    def available_ram(self) -> int:
        return self.available

    def total_ram(self) -> int:
        return 64 * 1024 * MiB


class FakeGpus:
    def __init__(self, *free_mib: int) -> None:
        self.free = [f * MiB for f in free_mib]

    def gpus(self) -> list[GpuInfo]:
        return [GpuInfo(i, f"fake{i}", f, f) for i, f in enumerate(self.free)]

    def process_vram(self, pid: int) -> int:
        return 0


class World:
    """A scheduler wired to fakes, plus what the tests observe."""

    def __init__(self, tmp_path: Path, gpus: FakeGpus | None = None, **overrides: Any) -> None:
        self.violations: list[str] = []
        self.runners: list[FakeRunner] = []
        self.load_step_s = overrides.pop("load_step_s", 0.0005)
        self.load_gate: asyncio.Semaphore | None = overrides.pop("load_gate", None)
        self.events = EventBus()
        self.log: list[dict[str, Any]] = []
        self.events.add_listener(self.log.append)
        options = {
            "models_dir": tmp_path,
            "state_dir": tmp_path,
            "spare_runner": False,
            "ram_reserve_bytes": 0,
            "vram_reserve_bytes": 0,
            "keep_alive_s": 300.0,
        }
        available = overrides.pop("available", 32 * 1024 * MiB)
        pending_timeout_s = overrides.pop("pending_timeout_s", 5.0)
        clock = overrides.pop("clock", None)
        options.update(overrides)
        self.memory = FakeMemory(available)
        self.scheduler = Scheduler(
            Settings(**options),
            self.events,
            memory=self.memory,
            gpu=gpus or FakeGpus(),
            runner_factory=self._new_runner,
            pending_timeout_s=pending_timeout_s,
            pressure_interval_s=0,
            clock=clock,
        )
        self.scheduler.start()

    async def _new_runner(self) -> Any:
        runner = FakeRunner(self)
        self.runners.append(runner)
        return runner

    async def acquire(self, spec: ModelSpec, keep_alive: float | None = None) -> Lease:
        lease = await self.scheduler.acquire(spec, keep_alive)
        lease.runner.active += 1  # type: ignore[attr-defined]
        return lease

    def release(self, lease: Lease, keep_alive: float | None = None) -> None:
        lease.runner.active -= 1  # type: ignore[attr-defined]
        lease.release(keep_alive)

    async def use(self, spec: ModelSpec, keep_alive: float | None = None) -> None:
        self.release(await self.acquire(spec, keep_alive), keep_alive)
        await self.settle()

    async def settle(self) -> None:
        """Return once the scheduler has handled every message and what it answered
        has run: its inbox stayed empty for a few loop turns (a grant wakes the
        requester one turn later; a requester's reaction may post again)."""
        quiet = 0
        while quiet < 3:
            await asyncio.sleep(0)
            quiet = quiet + 1 if self.scheduler._inbox.empty() else 0

    def loaded(self) -> set[str]:
        return {key.split(":")[0] for key in self.scheduler.models}

    def unloads(self, reason: str) -> list[str]:
        return [
            e["model"].split(":")[0]
            for e in self.log
            if e["type"] == "unloaded" and e["reason"] == reason
        ]


def spec(name: str, mib: int = 100, num_gpu: int | None = None) -> ModelSpec:
    facts = ModelFacts(
        architecture="llama",
        parameter_count=1,
        quantization="Q4_0",
        context_length=4096,
        block_count=2,
        embedding_length=0,
        head_count=0,
        head_count_kv=0,
        chat_template=None,
        file_size=mib * MiB,
        tensor_bytes=mib * MiB,
        layer_bytes=[mib * MiB // 2] * 2,
        output_bytes=0,
    )
    return ModelSpec(
        ModelName.parse(name),
        "sha256:" + "0" * 64,
        Path("/nonexistent"),
        facts,
        num_ctx=512,
        num_gpu=num_gpu,
    )


def budget_for(*mibs: int) -> int:
    return sum((m + OVERHEAD_MIB) * MiB for m in mibs) + MiB


async def test_least_recently_used_idle_model_is_evicted_first(tmp_path: Path) -> None:
    world = World(tmp_path, max_ram_bytes=budget_for(100, 100))
    await world.use(spec("a"))
    await world.use(spec("b"))
    await world.use(spec("a"))  # a is now the most recently used
    await world.use(spec("c"))
    assert world.loaded() == {"a", "c"}
    assert world.unloads("evicted") == ["b"]


async def test_a_busy_model_is_never_evicted_the_new_load_waits(tmp_path: Path) -> None:
    world = World(tmp_path, max_ram_bytes=budget_for(100))
    lease_a = await world.acquire(spec("a"))
    waiting = asyncio.ensure_future(world.acquire(spec("b")))
    await world.settle()
    assert not waiting.done() and world.loaded() == {"a"}
    world.release(lease_a)
    lease_b = await asyncio.wait_for(waiting, 2)
    assert world.loaded() == {"b"} and world.unloads("evicted") == ["a"]
    world.release(lease_b)
    assert world.violations == []


async def test_waiting_for_a_busy_model_is_bounded_then_503(tmp_path: Path) -> None:
    world = World(tmp_path, max_ram_bytes=budget_for(100), pending_timeout_s=0.2)
    lease = await world.acquire(spec("a"))
    with pytest.raises(BusyError) as info:
        await asyncio.wait_for(world.acquire(spec("b")), 3)
    assert info.value.status == 503 and "busy" in info.value.message
    world.release(lease)


async def test_pinned_models_are_evicted_last(tmp_path: Path) -> None:
    world = World(tmp_path, max_ram_bytes=budget_for(100, 100))
    await world.use(spec("pinned"), keep_alive=-1)
    await world.use(spec("b"))
    await world.use(spec("c"))
    assert world.loaded() == {"pinned", "c"}
    (row,) = [r for r in world.scheduler.snapshot() if r["model"].startswith("pinned")]
    assert row["expires_at"] == FOREVER_WALL


async def test_a_model_that_can_never_fit_is_refused_and_nothing_is_unloaded(
    tmp_path: Path,
) -> None:
    world = World(tmp_path, max_ram_bytes=budget_for(100, 100))
    await world.use(spec("a"))
    with pytest.raises(ModelTooLargeError) as info:
        await world.acquire(spec("huge", mib=5000))
    assert "needs about" in info.value.message and "budget" in info.value.message
    assert world.loaded() == {"a"} and world.unloads("evicted") == []


async def test_queue_changes_are_published(tmp_path: Path) -> None:
    world = World(tmp_path, max_ram_bytes=budget_for(100))
    lease = await world.acquire(spec("a"))
    waiting = asyncio.ensure_future(world.acquire(spec("b")))
    await world.settle()
    world.release(lease)
    world.release(await asyncio.wait_for(waiting, 2))
    depths = [(e["model"], e["depth"]) for e in world.log if e["type"] == "queue"]
    assert ("b:latest", 1) in depths and depths[-1] == ("b:latest", 0)


async def test_load_progress_is_published_and_shown_while_loading(tmp_path: Path) -> None:
    gate = asyncio.Semaphore(0)
    world = World(tmp_path, load_gate=gate)
    loading = asyncio.ensure_future(world.acquire(spec("a")))
    await eventually_async(lambda: world.scheduler.snapshot(), 2, what="the load started")
    gate.release()  # past the runner's 0.0, to its 0.5
    await eventually_async(
        lambda: world.scheduler.snapshot()[0]["load_progress"] == 0.5, 2, what="progress 0.5"
    )
    (row,) = world.scheduler.snapshot()
    assert row["state"] == "loading" and row["load_progress"] == 0.5
    gate.release()
    gate.release()
    world.release(await asyncio.wait_for(loading, 2))
    kinds = [e["type"] for e in world.log if e["model"] == "a:latest"]
    assert kinds.index("load_started") < kinds.index("load_progress") < kinds.index("loaded")
    progress = [e["progress"] for e in world.log if e["type"] == "load_progress"]
    assert progress == [0.0, 0.5, 1.0]
    (row,) = world.scheduler.snapshot()
    assert row["state"] == "ready" and row["load_progress"] == 1.0


async def wait_for_runners(world: World, count: int, timeout: float = 2.0) -> None:
    await eventually_async(lambda: len(world.runners) >= count, timeout, what=f"{count} runners")


async def test_the_spare_runner_starts_only_once_no_model_decodes(tmp_path: Path) -> None:
    world = World(tmp_path, spare_runner=True)
    lease = await world.acquire(spec("a"))  # a request decoding on the fresh model
    await asyncio.sleep(0.6)  # well past the refill delay: time must pass, nothing happens
    assert len(world.runners) == 1  # no spare while the first answer streams
    world.release(lease)
    await wait_for_runners(world, 2)
    assert len(world.runners) == 2
    spare = world.runners[1]
    await world.use(spec("b"))  # the next load takes the spare, starts no process itself
    assert world.scheduler.models["b:latest"].runner is spare


async def test_the_spare_runner_starts_by_the_deadline_under_steady_traffic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("localserve.scheduling.spare.SPARE_REFILL_DEADLINE_S", 0.5)
    world = World(tmp_path, spare_runner=True)
    lease = await world.acquire(spec("a"))
    await wait_for_runners(world, 2)
    assert len(world.runners) == 2  # still decoding, but the deadline passed
    world.release(lease)


async def test_concurrent_first_requests_load_the_model_once(tmp_path: Path) -> None:
    world = World(tmp_path)
    leases = await asyncio.gather(*(world.acquire(spec("a")) for _ in range(6)))
    assert len(world.runners) == 1
    assert sum(1 for e in world.log if e["type"] == "load_started") == 1
    assert {id(lease.runner) for lease in leases} == {id(world.runners[0])}
    for lease in leases:
        world.release(lease)


async def test_keep_alive_zero_unloads_when_the_last_request_ends(tmp_path: Path) -> None:
    world = World(tmp_path)
    first = await world.acquire(spec("a"), keep_alive=0)
    second = await world.acquire(spec("a"), keep_alive=0)
    world.release(first, 0)
    await world.settle()
    assert world.loaded() == {"a"}  # one request still running
    world.release(second, 0)
    await world.settle()
    assert world.loaded() == set() and world.unloads("keep_alive") == ["a"]


async def test_keep_alive_expiry_unloads_after_the_duration(tmp_path: Path) -> None:
    clock = FakeClock()
    world = World(tmp_path, clock=clock)
    await world.use(spec("a"), keep_alive=300)
    assert world.loaded() == {"a"}
    row = world.scheduler.snapshot()[0]
    assert row["expires_at"] == clock.time() + 300
    await clock.advance_and_settle(299)
    await world.settle()
    assert world.loaded() == {"a"} and world.unloads("expired") == []
    await clock.advance_and_settle(2)
    await eventually_async(lambda: world.loaded() == set(), 2, what="the model expired")
    assert world.unloads("expired") == ["a"]


async def test_a_request_waiting_for_room_gets_503_at_its_deadline(tmp_path: Path) -> None:
    clock = FakeClock()
    world = World(tmp_path, clock=clock, max_loaded=1, pending_timeout_s=120)
    busy = await world.acquire(spec("a"))
    waiting = asyncio.create_task(world.scheduler.acquire(spec("b")))
    await world.settle()
    await clock.advance_and_settle(119)
    assert not waiting.done()
    await clock.advance_and_settle(2)
    with pytest.raises(BusyError):
        await asyncio.wait_for(waiting, 5)
    world.release(busy)


def cancel_right_after_the_grant(scheduler: Scheduler, request: asyncio.Task[Any]) -> None:
    """Cancel `request` in the scheduler's step that grants it a lease: the cancel lands
    before the request resumes to see the lease."""
    grant = scheduler._grant

    def grant_then_cancel(model: Any, future: Any, keep: float | None) -> None:
        grant(model, future, keep)
        request.cancel()

    scheduler._grant = grant_then_cancel  # type: ignore[method-assign]


async def test_a_request_cancelled_right_after_its_grant_releases_its_lease(
    tmp_path: Path,
) -> None:
    """The cancel lands after the scheduler granted the lease but before the request saw
    it: the lease must still be released, so the model goes idle and expires on time."""
    world = World(tmp_path)
    scheduler = world.scheduler
    request = asyncio.create_task(scheduler.acquire(spec("a"), 0.1))
    cancel_right_after_the_grant(scheduler, request)
    with pytest.raises(asyncio.CancelledError):
        await request
    await world.settle()
    assert [row["in_flight"] for row in scheduler.snapshot()] == [0]
    await eventually_async(lambda: world.loaded() == set(), 2, what="the model expired")
    assert world.loaded() == set() and world.unloads("expired") == ["a"]


async def test_max_loaded_caps_the_number_of_models(tmp_path: Path) -> None:
    world = World(tmp_path, max_loaded=2)
    for name in "abcd":
        await world.use(spec(name))
    assert world.loaded() == {"c", "d"}


async def test_outside_memory_pressure_reclaims_idle_models_only(tmp_path: Path) -> None:
    world = World(tmp_path, ram_reserve_bytes=512 * MiB, available=8 * 1024 * MiB)
    await world.use(spec("idle"))
    busy = await world.acquire(spec("busy"))
    world.memory.available = 100 * MiB  # another program grew
    world.scheduler._post(world.scheduler._check_pressure)
    await world.settle()
    assert world.loaded() == {"busy"} and world.unloads("reclaim") == ["idle"]
    world.release(busy)
    assert world.violations == []


async def test_gpu_offload_is_chosen_from_free_vram(tmp_path: Path) -> None:
    world = World(tmp_path, gpus=FakeGpus(4096))
    lease = await world.acquire(spec("a", mib=1000))
    assert lease.runner.load_args["num_gpu"] == 3  # both layers and the output layer
    row = world.scheduler.snapshot()[0]
    assert row["size_vram"] > 0 and row["size"] > row["size_vram"]
    world.release(lease)


async def test_partial_offload_when_the_gpu_is_small(tmp_path: Path) -> None:
    world = World(tmp_path, gpus=FakeGpus(256 + 600))  # room for one 500 MiB layer
    lease = await world.acquire(spec("a", mib=1000))
    assert lease.runner.load_args["num_gpu"] == 1
    world.release(lease)


async def test_idle_model_holding_vram_is_evicted_for_a_full_offload(tmp_path: Path) -> None:
    world = World(tmp_path, gpus=FakeGpus(256 + 1100))
    await world.use(spec("old", mib=1000))
    lease = await world.acquire(spec("new", mib=1000))
    assert lease.runner.load_args["num_gpu"] == 3
    assert world.unloads("evicted") == ["old"]
    world.release(lease)


async def test_num_gpu_option_is_passed_through(tmp_path: Path) -> None:
    world = World(tmp_path, gpus=FakeGpus(8192))
    lease = await world.acquire(spec("a", mib=1000, num_gpu=1))
    assert lease.runner.load_args["num_gpu"] == 1
    world.release(lease)


async def test_two_gpus_get_a_tensor_split(tmp_path: Path) -> None:
    world = World(tmp_path, gpus=FakeGpus(256 + 600, 256 + 600))
    lease = await world.acquire(spec("a", mib=1000))
    split = lease.runner.load_args["tensor_split"]
    assert split is not None and len(split) == 2 and abs(sum(split) - 1) < 1e-9
    world.release(lease)


# ---- the loaded-model state machine ----------------------------------------------------


def test_every_state_but_stopping_can_stop_and_stopping_is_final() -> None:
    assert set(TRANSITIONS) == set(ModelState)
    for state in ModelState:
        assert state not in TRANSITIONS[state]
        assert (ModelState.STOPPING in TRANSITIONS[state]) == (state is not ModelState.STOPPING)
    assert TRANSITIONS[ModelState.STOPPING] == frozenset()
    assert ModelState.LOADING not in {s for targets in TRANSITIONS.values() for s in targets}


def test_an_illegal_state_change_is_logged_and_raised(caplog: pytest.LogCaptureFixture) -> None:
    model = LoadedModel(spec("a"), estimate=0)
    model.move_to(ModelState.READY)
    with (
        caplog.at_level(logging.ERROR, "localserve.scheduling.scheduler"),
        pytest.raises(IllegalTransitionError, match="READY -> LOADING"),
    ):
        model.move_to(ModelState.LOADING)
    assert model.state is ModelState.READY
    assert "illegal state change of a:latest: READY -> LOADING" in caplog.text


def test_clients_see_draining_as_stopping() -> None:
    wire = {state: state.wire for state in ModelState}
    assert wire == {
        ModelState.LOADING: "loading",
        ModelState.READY: "ready",
        ModelState.DRAINING: "stopping",
        ModelState.STOPPING: "stopping",
    }


async def test_unloading_a_busy_model_drains_it_then_stops_it(tmp_path: Path) -> None:
    world = World(tmp_path)
    first = await world.acquire(spec("a"))
    assert await world.scheduler.unload(ModelName.parse("a")) is True
    model = world.scheduler.models["a:latest"]
    assert model.state is ModelState.DRAINING
    (row,) = world.scheduler.snapshot()
    assert row["state"] == "stopping" and row["expires_at"] <= time.time()
    second = await world.acquire(spec("a"))  # a draining model still serves
    assert second.runner is first.runner
    world.release(first)
    await world.settle()
    assert world.loaded() == {"a"}
    world.release(second)
    await world.settle()
    assert world.loaded() == set() and world.unloads("keep_alive") == ["a"]
    assert model.state is ModelState.STOPPING
    assert world.violations == []


async def test_unloading_a_loading_model_serves_its_waiters_then_stops_it(tmp_path: Path) -> None:
    gate = asyncio.Semaphore(0)
    world = World(tmp_path, load_gate=gate)
    waiting = asyncio.ensure_future(world.acquire(spec("a")))
    await eventually_async(lambda: world.scheduler.snapshot(), 2, what="the load started")
    assert await world.scheduler.unload(ModelName.parse("a")) is True
    (row,) = world.scheduler.snapshot()
    assert row["state"] == "stopping" and row["load_progress"] == 0.0  # still loading
    assert world.scheduler.models["a:latest"].state is ModelState.DRAINING
    for _ in range(3):
        gate.release()
    lease = await asyncio.wait_for(waiting, 2)
    (row,) = world.scheduler.snapshot()
    assert row["state"] == "stopping" and row["load_progress"] == 1.0
    world.release(lease)
    await world.settle()
    assert world.loaded() == set() and world.unloads("keep_alive") == ["a"]


async def test_unloading_an_idle_model_stops_it_at_once(tmp_path: Path) -> None:
    world = World(tmp_path)
    await world.use(spec("a"))
    model = world.scheduler.models["a:latest"]
    assert model.state is ModelState.READY
    assert await world.scheduler.unload(ModelName.parse("a")) is True
    assert model.state is ModelState.STOPPING and world.unloads("request") == ["a"]
    assert await world.scheduler.unload(ModelName.parse("a")) is False


# ---- leases as a block -------------------------------------------------------------------


def in_flight(world: World) -> int:
    return sum(m.in_flight for m in world.scheduler.models.values())


async def test_leaving_a_lease_block_releases_with_the_entry_keep_alive(tmp_path: Path) -> None:
    world = World(tmp_path)
    async with world.scheduler.lease(spec("a"), 0.1) as lease:
        await world.settle()
        assert lease.runner is world.runners[0] and in_flight(world) == 1
        assert lease.keep_alive_s == 0.1
    await world.settle()
    assert in_flight(world) == 0 and lease.released
    row = world.scheduler.snapshot()[0]
    assert 0 < row["expires_at"] - time.time() <= 0.1
    await eventually_async(lambda: world.loaded() == set(), 2, what="the model expired")
    assert world.unloads("expired") == ["a"]


async def test_a_lease_block_may_change_the_keep_alive_it_leaves_with(tmp_path: Path) -> None:
    world = World(tmp_path)
    async with world.scheduler.lease(spec("a"), 300) as lease:
        lease.keep_alive_s = 0
    await world.settle()
    assert world.loaded() == set() and world.unloads("keep_alive") == ["a"]


async def test_a_lease_block_left_by_an_error_or_a_cancel_releases(tmp_path: Path) -> None:
    world = World(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        async with world.scheduler.lease(spec("a")):
            raise RuntimeError("boom")
    await world.settle()
    assert in_flight(world) == 0
    entered = asyncio.Event()

    async def request() -> None:
        async with world.scheduler.lease(spec("a")):
            entered.set()
            await asyncio.Event().wait()  # a generation that never ends

    task = asyncio.create_task(request())
    await asyncio.wait_for(entered.wait(), 2)
    await world.settle()
    assert in_flight(world) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await world.settle()
    assert in_flight(world) == 0


async def test_a_lease_is_released_exactly_once(tmp_path: Path) -> None:
    """A release inside the block, then the block's own: one release, so a second
    request's hold on the same model stays counted."""
    world = World(tmp_path)
    other = await world.scheduler.acquire(spec("a"))
    async with world.scheduler.lease(spec("a")) as lease:
        lease.release()
    await world.settle()
    assert in_flight(world) == 1
    other.release()
    await world.settle()
    assert in_flight(world) == 0


async def test_a_lease_block_cancelled_right_after_its_grant_holds_nothing(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    scheduler = world.scheduler
    entered = False

    async def request() -> None:
        nonlocal entered
        async with scheduler.lease(spec("a"), 0.1):
            entered = True

    task = asyncio.create_task(request())
    cancel_right_after_the_grant(scheduler, task)
    with pytest.raises(asyncio.CancelledError):
        await task
    await world.settle()
    assert not entered and in_flight(world) == 0
    await eventually_async(lambda: world.loaded() == set(), 2, what="the model expired")
    assert world.unloads("expired") == ["a"]


# ---- invariants over random sequences ------------------------------------------------------

SIZES = {"m0": 40, "m1": 80, "m2": 120, "m3": 200, "m4": 900}
DOOMED = ("m5", 60)  # only requests cancelled right after their grant use this model
BUDGET = budget_for(120, 200)
KEEPS: list[float | None] = [None, 0, -1, 0.02, 300]


@dataclass(eq=False)
class Block:
    """A request inside `async with scheduler.lease(...)` until `leave` is set."""

    task: asyncio.Task[None] | None = None
    leave: asyncio.Event = field(default_factory=asyncio.Event)
    entered: bool = False
    inside: bool = False
    new_keep: list[float | None] = field(default_factory=list)  # set lease.keep_alive_s

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()


class ErrorLog(logging.Handler):
    """Collects what the scheduler logs as errors (illegal transitions, failed messages)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class SchedulerMachine(RuleBasedStateMachine):
    """Random request / finish / disconnect / keep-alive sequences, through `acquire()`
    and through `lease()` blocks. Invariants: never over budget, never evict a busy model,
    every request answered or refused with a reason, no scheduler error logged, and the
    scheduler's in-flight count equals the leases requests hold: none leaks when a
    request is cancelled while it waits, right after its grant, or inside its block.

    No rule has a precondition: what a rule finds (a held lease, a waiting request)
    depends on timing, and hypothesis must be able to draw the same rules on a replay.
    """

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.mkdtemp()
        self.world: World = self.loop.run_until_complete(self._make_world())
        self.tasks: list[asyncio.Task[Lease]] = []  # acquire() calls not answered yet
        self.held: list[Lease] = []
        self.blocks: list[Block] = []  # lease() blocks, waiting to enter or inside
        self.doomed: Block | None = None  # to cancel right after its grant
        self.errors = ErrorLog()
        logging.getLogger("localserve.scheduling.scheduler").addHandler(self.errors)
        scheduler = self.world.scheduler
        grant = scheduler._grant

        def grant_then_cancel_the_doomed(
            model: Any, future: Any, keep: float | None, blocks: tuple[str, ...] = ()
        ) -> None:
            grant(model, future, keep, blocks)
            doomed = self.doomed
            granted = future.done() and not future.cancelled() and future.exception() is None
            if doomed and doomed.task and granted and model.spec.key.startswith(DOOMED[0]):
                doomed.task.cancel()  # before the request resumes to see its lease

        scheduler._grant = grant_then_cancel_the_doomed  # type: ignore[method-assign]

    async def _make_world(self) -> World:
        return World(Path(self.tmp), max_ram_bytes=BUDGET, pending_timeout_s=0.3)

    async def _advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # time passes: loads, keep-alive and queue timers
        await self.world.settle()

    def _run(self, seconds: float = 0.01) -> None:
        self.loop.run_until_complete(self._advance(seconds))
        for task in [t for t in self.tasks if t.done()]:
            self.tasks.remove(task)
            if task.cancelled():
                continue
            error = task.exception()
            if error is None:
                self.held.append(task.result())
            else:
                self._check_refusal(error)
        for block in [b for b in self.blocks if b.done]:
            self.blocks.remove(block)
            if block is self.doomed:
                self.doomed = None
                assert not block.entered, "a request cancelled at its grant entered its block"
            assert block.task is not None
            if not block.task.cancelled() and (error := block.task.exception()) is not None:
                self._check_refusal(error)

    @staticmethod
    def _check_refusal(error: BaseException) -> None:
        assert isinstance(error, BusyError | ModelTooLargeError), repr(error)
        assert str(error)

    async def _block(self, block: Block, model: ModelSpec, keep: float | None) -> None:
        async with self.world.scheduler.lease(model, keep) as lease:
            block.entered = block.inside = True
            lease.runner.active += 1  # type: ignore[attr-defined]
            try:
                await block.leave.wait()
                if block.new_keep:
                    lease.keep_alive_s = block.new_keep[0]
            finally:
                lease.runner.active -= 1  # type: ignore[attr-defined]
                block.inside = False

    def _start_block(self, model: ModelSpec, keep: float | None) -> Block:
        block = Block()
        block.task = self.loop.create_task(self._block(block, model, keep))
        self.blocks.append(block)
        return block

    @rule(name=st.sampled_from(sorted(SIZES)), keep=st.sampled_from(KEEPS))
    def request(self, name: str, keep: float | None) -> None:
        self.tasks.append(self.loop.create_task(self.world.acquire(spec(name, SIZES[name]), keep)))
        self._run()

    @rule(name=st.sampled_from(sorted(SIZES)), keep=st.sampled_from(KEEPS))
    def request_in_a_block(self, name: str, keep: float | None) -> None:
        self._start_block(spec(name, SIZES[name]), keep)
        self._run()

    @rule(keep=st.sampled_from(KEEPS))
    def request_cancelled_right_after_its_grant(self, keep: float | None) -> None:
        if self.doomed is None:  # one at a time: its grant is then the model's next one
            self.doomed = self._start_block(spec(*DOOMED), keep)
        self._run()

    @rule(index=st.integers(min_value=0, max_value=50), keep=st.sampled_from([None, 0, -1, 0.02]))
    def finish(self, index: int, keep: float | None) -> None:
        if self.held:
            lease = self.held.pop(index % len(self.held))
            self.world.release(lease, keep)
        self._run()

    @rule(
        index=st.integers(min_value=0, max_value=50),
        keep=st.sampled_from([*KEEPS, "as entered"]),
    )
    def leave_a_block(self, index: int, keep: float | str | None) -> None:
        if inside := [b for b in self.blocks if b.inside]:
            block = inside[index % len(inside)]
            if not isinstance(keep, str):
                block.new_keep.append(keep)
            block.leave.set()
        self._run()

    @rule(index=st.integers(min_value=0, max_value=50))
    def disconnect(self, index: int) -> None:
        """Cancel a request while it waits (for a load, or for room)."""
        if self.tasks:
            self.tasks[index % len(self.tasks)].cancel()
        self._run()

    @rule(index=st.integers(min_value=0, max_value=50))
    def disconnect_a_block(self, index: int) -> None:
        """Cancel a block's request, waiting to enter or inside."""
        if running := [b for b in self.blocks if not b.done]:
            task = running[index % len(running)].task
            assert task is not None
            task.cancel()
        self._run()

    @rule()
    def wait(self) -> None:
        self._run(0.05)

    @invariant()
    def never_over_budget(self) -> None:
        held = sum(m.size for m in self.world.scheduler.models.values())
        assert held <= BUDGET

    @invariant()
    def never_evicts_a_busy_model(self) -> None:
        assert self.world.violations == []

    @invariant()
    def in_flight_count_equals_held_leases(self) -> None:
        in_flight = sum(m.in_flight for m in self.world.scheduler.models.values())
        held = len(self.held) + sum(1 for b in self.blocks if b.inside)
        assert in_flight == held

    @invariant()
    def no_scheduler_error(self) -> None:
        assert self.errors.messages == []

    def teardown(self) -> None:
        try:
            deadline = time.monotonic() + 3
            while True:
                for lease in self.held:
                    self.world.release(lease)
                self.held.clear()
                for block in self.blocks:
                    block.leave.set()
                if not (self.tasks or self.blocks) or time.monotonic() >= deadline:
                    break
                self._run(0.05)
            assert self.tasks == [], "a request was neither answered nor refused"
            assert self.blocks == [], "a lease block never ended"
            assert self.world.violations == []
            self.loop.run_until_complete(self.world.scheduler.close())
        finally:
            logging.getLogger("localserve.scheduling.scheduler").removeHandler(self.errors)
            self.loop.close()


TestSchedulerInvariants = SchedulerMachine.TestCase
TestSchedulerInvariants.settings = hypothesis_settings(
    max_examples=15, stateful_step_count=25, deadline=None
)


# ---- with real runner processes --------------------------------------------------------------


def _generate(base: str, model: str, tokens: int = 2) -> dict[str, Any]:
    import urllib.request

    body = json.dumps(
        {"model": model, "prompt": "x", "stream": False, "options": {"num_predict": tokens}}
    ).encode()
    with urllib.request.urlopen(base + "/api/generate", body, timeout=60) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def test_twenty_models_cycle_through_room_for_three_and_every_answer_is_right(
    tmp_path: Path,
) -> None:
    letters = "abcdefghijklmnopqrst"
    with running_daemon(tmp_path, max_loaded=3) as daemon:
        seen: list[dict[str, Any]] = []
        daemon.daemon.events.add_listener(seen.append)
        for index, char in enumerate(letters):
            daemon.add_model(
                f"m{char}",
                write_tiny_gguf(tmp_path / f"{char}.gguf", char, padding_ffn=64 * (1 + index % 4)),
            )
        for char in letters + letters[::3]:
            assert _generate(daemon.base_url, f"m{char}")["response"] == char * 2
            assert len(daemon.ps()) <= 3
        evicted = [e for e in seen if e["type"] == "unloaded" and e["reason"] == "evicted"]
        loads = [e for e in seen if e["type"] == "loaded"]
        assert len(loads) == len(letters) + len(letters[::3])
        assert len(evicted) == len(loads) - len(daemon.ps())


def test_ps_reports_cpu_only_models_with_no_vram(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        daemon.add_model("tiny", write_tiny_gguf(tmp_path / "t.gguf", "t"))
        _generate(daemon.base_url, "tiny")
        (row,) = daemon.ps()
        assert row["size_vram"] == 0 and row["size"] > 0 and row["gpu_layers"] == 0


@pytest.mark.parametrize("batch_invariant", [False, True])
async def test_decode_mode_settings_reach_the_runner_load(
    tmp_path: Path, batch_invariant: bool
) -> None:
    world = World(tmp_path, batch_invariant=batch_invariant, flash_attn=not batch_invariant)
    lease = await world.acquire(spec("a"))
    assert lease.runner.load_args["batch_invariant"] is batch_invariant
    assert lease.runner.load_args["flash_attn"] is (not batch_invariant)
    world.release(lease)
