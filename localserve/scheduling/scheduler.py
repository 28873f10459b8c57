"""The scheduler: the single owner of every load and unload decision.

One asyncio task (`_run`) executes all state changes, one message at a time; everything
else posts messages to it (`_post`). Loads run in their own tasks and post their result
back. A request holds a ready runner for the length of a block:

    async with scheduler.lease(spec, keep_alive_s) as lease:
        ... lease.runner ...

(`acquire()` and `Lease.release()` are the same, unstructured).

Each loaded model moves through `ModelState` along `TRANSITIONS` only, every change
through `LoadedModel.move_to`. Placement maths (budget, room, GPU offload) are pure
functions in `placement.py`, the spare runner pool is `spare.py`, the RAM probe
`memory.py`, the GPU probe `gpu.py`.

Policy:
- load on first request; requests for a loading model wait for it; one load per model;
- keep a model for its keep_alive after its last request (0: unload now, <0: forever);
- keep several models while they fit the RAM budget and `max_loaded` (0 = no cap);
- evict least-recently-used idle models to make room, pinned (forever) ones last;
  never a model with requests in flight: the load waits (bounded), then 503;
- a model that can never fit is refused at once, naming its need and the budget;
- bound each model's waiting requests (`max_queue`): past it, 503 with Retry-After;
- replicas (`replicas.py`): a model may run in several runners; a request goes to the
  replica holding the longest prefix of its prompt, else the least busy; a replica is added
  while requests wait past the thresholds (`LOCALSERVE_MAX_REPLICAS`, scale-up only when
  it fits without evicting anything), an idle one leaves after its keep-alive, and an
  eviction takes an idle extra replica before any model.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

from localserve.config import Settings
from localserve.errors import (
    BusyError,
    LocalserveError,
    ModelLoadError,
    ModelTooLargeError,
    RunnerError,
)
from localserve.names import ModelName
from localserve.runner.handle import LoadResult, RunnerProcess
from localserve.scheduling.clock import Clock, LoopClock, Timer
from localserve.scheduling.fairness import Caller, FairShare
from localserve.scheduling.gpu import GpuProbe, NvmlGpuProbe
from localserve.scheduling.memory import MemoryProbe as MemoryProbe  # re-exported
from localserve.scheduling.memory import PsutilMemoryProbe
from localserve.scheduling.placement import (
    Limits,
    OffloadPlan,
    Resources,
    plan_room,
    reclaim_victims,
    tensor_split,
)
from localserve.scheduling.replicas import (
    PrefixMemory,
    QueueWindow,
    ScalePolicy,
    choose_replica,
    cpu_sets,
    prompt_blocks,
    scale_decision,
)
from localserve.scheduling.spare import RunnerFactory, SpareRunnerPool, spawn_runner
from localserve.store.gguf_facts import ModelFacts
from localserve.telemetry.events import EventBus

log = logging.getLogger("localserve.scheduling.scheduler")
FOREVER_WALL = 253402300799.0  # 9999-12-31T23:59:59Z, how /api/ps shows "forever"

# What /api/ps shows as a model's state (`ModelState.wire`).
SnapshotState = Literal["loading", "ready", "stopping"]


class ModelState(enum.Enum):
    """A loaded model's lifecycle; `TRANSITIONS` says which changes are allowed."""

    LOADING = "loading"  # its runner loads the file; requests wait for it
    READY = "ready"  # serving; expires after its keep-alive once idle
    # Unload asked while it was busy or loading: it still serves (new requests join),
    # and unloads as soon as it is idle. It may still be loading (no runner yet).
    DRAINING = "draining"
    # Out of the table: unloaded, failed to load, or its runner crashed. Final.
    STOPPING = "stopping"

    @property
    def wire(self) -> SnapshotState:
        """The state clients see in /api/ps (a draining model shows as stopping)."""
        return _WIRE_STATES[self]


_WIRE_STATES: dict[ModelState, SnapshotState] = {
    ModelState.LOADING: "loading",
    ModelState.READY: "ready",
    ModelState.DRAINING: "stopping",
    ModelState.STOPPING: "stopping",
}

TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    # loaded; unload asked while loading; shut down or failed to load
    ModelState.LOADING: frozenset({ModelState.READY, ModelState.DRAINING, ModelState.STOPPING}),
    # unload asked while busy; unloaded (expired, evicted, reclaimed, ...) or crashed
    ModelState.READY: frozenset({ModelState.DRAINING, ModelState.STOPPING}),
    # idle at last (or shut down, failed to load, crashed)
    ModelState.DRAINING: frozenset({ModelState.STOPPING}),
    ModelState.STOPPING: frozenset(),
}


class IllegalTransitionError(RuntimeError):
    """A state change `TRANSITIONS` does not allow: a bug in the scheduler."""


class ReplicaSnapshot(TypedDict):
    replica: int
    state: SnapshotState
    pid: int | None
    in_flight: int
    slots_busy: int
    threads: int
    cpus: list[int]  # the CPU set it is pinned to (LOCALSERVE_CPU_REPLICAS), else []


class ModelSnapshot(TypedDict):
    """One loaded model in `Scheduler.snapshot()`: what /api/ps, the metrics and the
    system monitor read (never used to make a decision)."""

    model: str  # the display name, e.g. "smollm2:135m"
    digest: str  # the model blob's
    state: SnapshotState
    load_progress: float  # llama.cpp's, 0..1; 1.0 once loaded
    size: int  # RAM + VRAM bytes
    size_vram: int
    gpu_layers: int
    context_length: int
    expires_at: float  # wall clock; FOREVER_WALL when pinned; now when stopping
    in_flight: int
    slots: int
    slots_busy: int
    queue_depth: int
    pid: int | None  # the runner's, None while loading
    threads: int  # llama.cpp threads decoding now
    facts: ModelFacts
    busy: bool
    queued_by_key: NotRequired[dict[str, int]]  # waiting requests per API key (fair share)
    replicas: NotRequired[list[ReplicaSnapshot]]  # every runner of the model (replicas.py)


@dataclass(frozen=True)
class ModelSpec:
    """What a request needs loaded: a model file with its load-time parameters."""

    name: ModelName
    digest: str
    path: Path
    facts: ModelFacts
    num_ctx: int
    num_gpu: int | None = None  # layers on the GPU; None = choose from free VRAM
    num_parallel: int = 1  # slots: concurrent sequences in one context of num_ctx each
    max_replicas: int = 1  # runners of this model at most (the autoscaler adds them)
    min_replicas: int = 1  # runners started when it loads (each still has its keep-alive)

    @property
    def key(self) -> str:
        return self.name.display()


@dataclass(eq=False)
class LoadedModel:
    spec: ModelSpec
    estimate: int  # RAM bytes expected (the part not offloaded)
    plan: OffloadPlan | None = None
    runner: RunnerProcess | None = None
    in_flight: int = 0
    waiters: list[tuple[asyncio.Future[Lease], float | None]] = field(default_factory=list)
    keep_alive_s: float = 300.0
    expires_at: float | None = None  # wall clock; None while busy or pinned
    expiry: Timer | None = None
    last_used: float = field(default_factory=time.monotonic)
    loaded_at: float = 0.0
    measured: int = 0
    load_result: LoadResult | None = None
    vram_measured: int = 0
    load_progress: float = 0.0  # llama.cpp's load progress, 0..1, while loading
    replica: int = 0  # 0: the model's first runner; 1, 2, ...: replicas the autoscaler added
    cpus: tuple[int, ...] = ()  # its CPU set (LOCALSERVE_CPU_REPLICAS)
    prefixes: PrefixMemory = field(default_factory=PrefixMemory)  # prompts it served lately
    _state: ModelState = field(default=ModelState.LOADING, init=False)

    @property
    def slot_key(self) -> str:
        """Its key in `Scheduler.models`: the model's name, `name#N` for replica N."""
        return self.spec.key if self.replica == 0 else f"{self.spec.key}#{self.replica}"

    @property
    def extra_replica(self) -> bool:
        return self.replica > 0

    @property
    def state(self) -> ModelState:
        return self._state

    def move_to(self, new: ModelState) -> None:
        """Change state along TRANSITIONS; any other change is a bug: logged, raised."""
        old = self._state
        if new not in TRANSITIONS[old]:
            log.error("illegal state change of %s: %s -> %s", self.spec.key, old.name, new.name)
            raise IllegalTransitionError(f"{self.spec.key}: {old.name} -> {new.name}")
        log.debug("%s: %s -> %s", self.spec.key, old.name, new.name)
        self._state = new

    @property
    def loading(self) -> bool:
        """In the table without a runner yet (LOADING, or DRAINING before it loaded)."""
        return self.runner is None and self._state is not ModelState.STOPPING

    @property
    def serving(self) -> bool:
        """Has a runner that takes requests (READY or DRAINING, loaded)."""
        return self.runner is not None and self._state in (
            ModelState.READY,
            ModelState.DRAINING,
        )

    @property
    def size(self) -> int:
        """RAM held (measured RSS once loaded, never below the estimate)."""
        return max(self.measured, self.estimate)

    @property
    def vram(self) -> int:
        planned = self.plan.vram_bytes if self.plan else 0
        return self.vram_measured or planned

    @property
    def per_gpu(self) -> tuple[int, ...]:
        return self.plan.per_gpu if self.plan else ()

    @property
    def pinned(self) -> bool:
        return self.keep_alive_s < 0

    @property
    def idle(self) -> bool:
        return self.serving and self.in_flight == 0 and not self.waiters


@dataclass(eq=False)
class Lease:
    """A request's hold on a ready runner. It takes effect once: a second `release()`
    does nothing. `Scheduler.lease()` releases it on leaving its block, with
    `keep_alive_s` (the keep-alive the request gave; the block may change it)."""

    model: LoadedModel
    runner: RunnerProcess
    scheduler: Scheduler
    keep_alive_s: float | None = None
    released: bool = False

    def release(self, keep_alive_s: float | None = None) -> None:
        """Give the runner back; `keep_alive_s` (when not None) is the model's from now."""
        if not self.released:
            self.released = True
            self.scheduler._post(lambda: self.scheduler._on_release(self.model, keep_alive_s))


@dataclass(eq=False)
class _Pending:
    spec: ModelSpec
    future: asyncio.Future[Lease]
    keep_alive_s: float | None
    deadline: float
    caller: Caller | None = None  # who asked (fair share orders by it)
    blocks: tuple[str, ...] = ()  # the prompt's fingerprint (replicas.prompt_blocks)


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        events: EventBus | None = None,
        *,
        memory: MemoryProbe | None = None,
        gpu: GpuProbe | None = None,
        runner_factory: RunnerFactory | None = None,
        pending_timeout_s: float = 120.0,
        pressure_interval_s: float = 3.0,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.events = events or EventBus()
        self.memory = memory or PsutilMemoryProbe()
        self.gpu: GpuProbe = gpu or NvmlGpuProbe()
        self.runner_pool = SpareRunnerPool(
            runner_factory or spawn_runner, settings.spare_runner, self._post
        )
        self.pending_timeout_s = pending_timeout_s
        self.pressure_interval_s = pressure_interval_s
        self.clock: Clock = clock or LoopClock()
        self.models: dict[str, LoadedModel] = {}
        self.stopping: dict[int, int] = {}  # runner pid -> bytes still held while it exits
        self.pending: list[_Pending] = []
        self._inbox: asyncio.Queue[Callable[[], None]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._queue_seen: dict[str, int] = {}
        self.fairness = FairShare(settings.fair_share)  # the order of waiting requests
        self.scale_policy = ScalePolicy(
            max_replicas=settings.max_replicas,
            wait_threshold_s=settings.scale_wait_s,
            queue_threshold=settings.scale_queue,
        )
        self.queue_windows: dict[str, QueueWindow] = {}  # per model, for the autoscaler

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="scheduler")
            if self.pressure_interval_s > 0:
                self._spawn(self._watch_pressure(), "memory-pressure")

    async def close(self) -> None:
        """Refuse new work, fail waiting requests, stop every runner."""
        self._closed = True
        self.runner_pool.disable()
        done = asyncio.Event()

        def shutdown() -> None:
            for pending in self.pending:
                _fail(pending.future, BusyError("the daemon is shutting down"))
            self.pending.clear()
            for model in list(self.models.values()):
                for future, _ in model.waiters:
                    _fail(future, BusyError("the daemon is shutting down"))
                model.waiters.clear()
                self._unload(model, "shutdown")
            done.set()

        self._post(shutdown)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 10)
        for task in list(self._background):
            if task.get_name() == "memory-pressure":
                task.cancel()
        await self.runner_pool.close()
        if self._background:
            await asyncio.wait(self._background, timeout=15)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def kill_runners(self) -> None:
        """SIGKILL every runner process at once (a forced exit, no graceful stop)."""
        pids = {m.runner.pid for m in self.models.values() if m.runner is not None}
        pids |= set(self.stopping) | self.runner_pool.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _post(self, message: Callable[[], None]) -> None:
        self._inbox.put_nowait(message)

    async def _run(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                message()
            except Exception:  # a bug here must not kill the owner task
                log.exception("scheduler message failed")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _publish(self, kind: str, **fields: Any) -> None:
        self.events.publish(kind, **fields)

    # ---- public API (called from request handlers) ------------------------------------

    async def acquire(
        self,
        spec: ModelSpec,
        keep_alive_s: float | None = None,
        caller: Caller | None = None,
        prompt: str | None = None,
    ) -> Lease:
        """Wait for a ready runner for `spec`; raises BusyError, ModelTooLargeError, ...
        `caller` (an API key) is who fair share serves in turn; `prompt` picks the replica
        that holds most of it."""
        if self._closed:
            raise BusyError("the daemon is shutting down")
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        # The prompt's fingerprint only matters when there can be several replicas.
        blocks = prompt_blocks(prompt) if prompt and spec.max_replicas > 1 else ()
        self._post(lambda: self._on_acquire(spec, future, keep_alive_s, caller, blocks))
        try:
            return await future
        except asyncio.CancelledError:
            self._post(lambda: self._on_abandon(future))
            raise

    @contextlib.asynccontextmanager
    async def lease(
        self,
        spec: ModelSpec,
        keep_alive_s: float | None = None,
        caller: Caller | None = None,
        prompt: str | None = None,
    ) -> AsyncIterator[Lease]:
        """Hold a ready runner for `spec` for the length of the block.

        Entering waits as `acquire()` does and raises what it raises; a request cancelled
        while waiting, or after the grant but before it saw the lease, holds nothing.
        Leaving (normally, by an exception or a cancel) releases exactly once, with
        `lease.keep_alive_s`: `keep_alive_s` unless the block changed it.
        """
        held = await self.acquire(spec, keep_alive_s, caller, prompt)
        try:
            yield held
        finally:
            held.release(held.keep_alive_s)

    def unload(self, name: ModelName) -> asyncio.Future[bool]:
        """Unload a model now, or as soon as its requests finish. Resolves True if loaded."""
        result: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def handle() -> None:
            replicas = self._replicas(name.display())
            for model in replicas:
                model.keep_alive_s = 0
                if model.idle:
                    self._unload(model, "request")
                else:  # busy or loading: unload once idle
                    if model.state is not ModelState.DRAINING:
                        model.move_to(ModelState.DRAINING)
                    model.expires_at = self.clock.time()
            result.set_result(bool(replicas))

        self._post(handle)
        return result

    def snapshot(self) -> list[ModelSnapshot]:
        """A read-only view for /api/ps; never used to make a decision."""
        rows: list[ModelSnapshot] = []
        groups: dict[str, list[LoadedModel]] = {}
        for model in sorted(self.models.values(), key=lambda m: m.replica):
            groups.setdefault(model.spec.key, []).append(model)
        firsts = sorted(
            (group[0] for group in groups.values()),
            key=lambda m: -max(r.last_used for r in groups[m.spec.key]),
        )
        for model in firsts:
            group = groups[model.spec.key]
            in_flight = sum(r.in_flight for r in group)
            slots = sum(r.spec.num_parallel for r in group)
            expires: float
            if model.state is ModelState.DRAINING:
                expires = self.clock.time()  # "Stopping..."
            elif model.pinned:
                expires = FOREVER_WALL
            elif model.expires_at is not None:
                expires = model.expires_at
            else:  # busy or loading: the keep-alive clock starts when it goes idle
                expires = self.clock.time() + model.keep_alive_s
            rows.append(
                {
                    "model": model.spec.key,
                    "digest": model.spec.digest,
                    "state": model.state.wire,
                    "load_progress": model.load_progress if model.loading else 1.0,
                    "size": sum(r.size + r.vram for r in group),
                    "size_vram": sum(r.vram for r in group),
                    "gpu_layers": model.plan.layers if model.plan else 0,
                    "context_length": model.spec.num_ctx,
                    "expires_at": expires,
                    "in_flight": in_flight,
                    "slots": slots,
                    "slots_busy": sum(min(r.in_flight, r.spec.num_parallel) for r in group),
                    "queue_depth": self._queue_depth(model.spec.key),
                    "pid": model.runner.pid if model.runner else None,
                    "threads": model.runner.threads if model.runner else 0,
                    "facts": model.spec.facts,
                    "busy": in_flight > 0,
                    "queued_by_key": self.fairness.waiting_by_key(model.spec.key),
                    "replicas": [
                        {
                            "replica": r.replica,
                            "state": r.state.wire,
                            "pid": r.runner.pid if r.runner else None,
                            "in_flight": r.in_flight,
                            "slots_busy": min(r.in_flight, r.spec.num_parallel),
                            "threads": r.runner.threads if r.runner else 0,
                            "cpus": list(r.cpus),
                        }
                        for r in group
                    ],
                }
            )
        return rows

    def _replicas(self, key: str) -> list[LoadedModel]:
        """Every runner of the model `key` (its replicas), first replica first."""
        return sorted(
            (m for m in self.models.values() if m.spec.key == key), key=lambda m: m.replica
        )

    # ---- message handlers (run only inside the owner task) ------------------------------

    def _queue_depth(self, key: str) -> int:
        waiting = sum(1 for p in self.pending if p.spec.key == key)
        for model in self._replicas(key):
            waiting += len(model.waiters)
            waiting += max(0, model.in_flight - model.spec.num_parallel)
        return waiting

    def _on_acquire(
        self,
        spec: ModelSpec,
        future: asyncio.Future[Lease],
        keep_alive_s: float | None,
        caller: Caller | None = None,
        blocks: tuple[str, ...] = (),
    ) -> None:
        if future.done():
            return
        if self._closed:
            _fail(future, BusyError("the daemon is shutting down"))
            return
        if self._queue_depth(spec.key) >= self.settings.max_queue:
            _fail(
                future,
                BusyError(
                    f"server busy: {self.settings.max_queue} requests already waiting for "
                    f"{spec.key}",
                    retry_after=2,
                ),
            )
            self._publish("queue_full", model=spec.key)
            return
        deadline = self.clock.monotonic() + self.pending_timeout_s
        self.pending.append(_Pending(spec, future, keep_alive_s, deadline, caller, blocks))
        self.fairness.arrive(future, spec.key, caller)
        self.clock.call_later(self.pending_timeout_s + 0.01, self._post, self._expire_pending)
        self._schedule()
        queued = self.fairness.announce(future, [p.future for p in self.pending])
        if queued is not None:  # it waits: say where (fairness.py)
            self._publish("request_queued", **queued)
        self._consider_scale_up(spec)

    def _on_abandon(self, future: asyncio.Future[Lease]) -> None:
        if future.done() and not future.cancelled() and future.exception() is None:
            # Granted, but the request was cancelled before it saw the lease.
            future.result().release()
            return
        self.pending = [p for p in self.pending if p.future is not future]
        for model in self.models.values():
            model.waiters = [w for w in model.waiters if w[0] is not future]
        self._schedule()

    def _grant(
        self,
        model: LoadedModel,
        future: asyncio.Future[Lease],
        keep: float | None,
        blocks: tuple[str, ...] = (),
    ) -> None:
        if future.done() or model.runner is None:
            return
        model.prefixes.remember(blocks)
        model.in_flight += 1
        model.last_used = self.clock.monotonic()
        if keep is not None:
            model.keep_alive_s = keep
        model.expires_at = None
        if model.expiry is not None:
            model.expiry.cancel()
            model.expiry = None
        self.fairness.granted(future)
        future.set_result(Lease(model, model.runner, self, keep_alive_s=keep))

    def _on_release(self, model: LoadedModel, keep_alive_s: float | None) -> None:
        model.in_flight = max(0, model.in_flight - 1)
        model.last_used = self.clock.monotonic()
        if keep_alive_s is not None:
            model.keep_alive_s = keep_alive_s
        if self.fairness.enabled:
            self._pass_slot_on(model)  # a request waiting for this slot takes it first
        if self.models.get(model.slot_key) is model and model.idle:
            self._arm_expiry(model)
        self._schedule()

    def _arm_expiry(self, model: LoadedModel) -> None:
        if model.state is ModelState.DRAINING or model.keep_alive_s == 0:
            self._unload(model, "keep_alive")
            return
        if model.expiry is not None:
            model.expiry.cancel()
            model.expiry = None
        if model.pinned:
            model.expires_at = None
            return
        model.expires_at = self.clock.time() + model.keep_alive_s
        model.expiry = self.clock.call_later(
            model.keep_alive_s, self._post, lambda: self._on_expire(model)
        )

    def _on_expire(self, model: LoadedModel) -> None:
        if (
            self.models.get(model.slot_key) is model
            and model.idle
            and model.expires_at is not None
            and model.expires_at <= self.clock.time() + 0.05
        ):
            self._unload(model, "expired")
            self._schedule()

    def _expire_pending(self) -> None:
        now = self.clock.monotonic()
        for pending in [p for p in self.pending if p.deadline <= now]:
            if self._waits_for_slot(pending):
                continue  # its model is serving: it waits its turn (fairness), not memory
            self.pending.remove(pending)
            _fail(
                pending.future,
                BusyError(
                    f"timed out waiting for memory to load {pending.spec.key}: every loaded "
                    "model is busy",
                    retry_after=5,
                ),
            )

    def _pass_slot_on(self, model: LoadedModel) -> None:
        """Fair share: the model's free slots go to its waiting requests, in fair order,
        before anything else is planned (an emptied model must not look idle, evictable)."""
        if self.models.get(model.slot_key) is not model or not model.serving:
            return
        for pending in self.fairness.order(self.pending, lambda p: p.future):
            if not self.fairness.has_free_slot(model.in_flight, model.spec.num_parallel):
                return
            if pending.spec.key != model.spec.key or pending.future.done():
                continue
            if pending.caller is not None and self._compatible(model, pending.spec):
                self.pending.remove(pending)
                self._record_wait(pending)
                self._grant(model, pending.future, pending.keep_alive_s, pending.blocks)

    def _waits_for_slot(self, pending: _Pending) -> bool:
        """A request with a caller (an API key) whose model serves with every slot busy:
        fair share holds it here (requests without one go to the runner's own queue)."""
        if pending.caller is None:
            return False
        serving = [
            m
            for m in self._replicas(pending.spec.key)
            if m.serving and self._compatible(m, pending.spec)
        ]
        return bool(serving) and not any(
            self.fairness.has_free_slot(m.in_flight, m.spec.num_parallel) for m in serving
        )

    def _compatible(self, model: LoadedModel, spec: ModelSpec) -> bool:
        return (
            model.spec.digest == spec.digest
            and model.spec.num_ctx == spec.num_ctx
            and model.spec.num_gpu == spec.num_gpu
            and model.spec.num_parallel == spec.num_parallel
        )

    def _schedule(self) -> None:
        """Serve what can be served now: attach, load (evicting idle models), or wait."""
        if self._closed:
            return
        try:
            self._schedule_pending()
        finally:
            self._publish_queue_changes()
            for moved in self.fairness.moved([p.future for p in self.pending]):
                self._publish("request_queued", **moved)  # a tagged request's new place

    def _publish_queue_changes(self) -> None:
        """Publish (and log) each model's queue depth when it changes."""
        keys = {p.spec.key for p in self.pending} | set(self.models) | set(self._queue_seen)
        for key in keys:
            depth = self._queue_depth(key)
            if depth != self._queue_seen.get(key, 0):
                log.debug("queue for %s: %d waiting", key, depth)
                self._publish("queue", model=key, depth=depth)
                if depth:
                    self._queue_seen[key] = depth
                else:
                    self._queue_seen.pop(key, None)

    def _schedule_pending(self) -> None:
        for pending in self.fairness.order(self.pending, lambda p: p.future):
            if pending.future.done():
                self.pending.remove(pending)
                continue
            spec = pending.spec
            group = self._replicas(spec.key)
            stale = [m for m in group if not self._compatible(m, spec)]
            if stale and len(stale) == len(group):
                if not all(m.idle for m in stale):
                    continue  # wait for its requests to finish, then reload
                for old in stale:
                    self._unload(old, "reload")
                group = []
            model = self._choose_replica(pending, [m for m in group if m not in stale])
            if model is not None:
                if self._waits_for_slot(pending):
                    continue  # every slot is busy: it waits here, served in fair order
                self.pending.remove(pending)
                if model.serving:
                    self._record_wait(pending)
                    self._grant(model, pending.future, pending.keep_alive_s, pending.blocks)
                else:
                    model.prefixes.remember(pending.blocks)  # it will run there
                    model.waiters.append((pending.future, pending.keep_alive_s))
                continue
            try:
                room = self._plan_room(spec)
            except ModelTooLargeError as exc:
                self.pending.remove(pending)
                _fail(pending.future, exc)
                continue
            if room is None:
                continue  # not now: a busy model holds the memory
            victims, plan = room
            for victim in victims:
                self._unload(victim, "evicted", for_model=spec.key)
            self.pending.remove(pending)
            self._start_load(
                spec,
                plan,
                pending.keep_alive_s,
                waiter=pending.future,
                blocks=pending.blocks,
                limit=spec.max_replicas,
            )

    def _choose_replica(self, pending: _Pending, group: list[LoadedModel]) -> LoadedModel | None:
        """The replica for a request: among the serving ones (with a free slot, for a
        request fair share holds), the one holding the longest prefix of its prompt, else
        the least busy; a loading one when none serves yet."""
        serving = [m for m in group if m.serving]
        if pending.caller is not None and self.fairness.enabled:
            free = [
                m for m in serving if self.fairness.has_free_slot(m.in_flight, m.spec.num_parallel)
            ]
            serving = free or serving
        if serving:
            return choose_replica(serving, pending.blocks)
        return group[0] if group else None

    def _record_wait(self, pending: _Pending) -> None:
        arrived = pending.deadline - self.pending_timeout_s
        now = self.clock.monotonic()
        window = self.queue_windows.setdefault(
            pending.spec.key, QueueWindow(self.scale_policy.window_s)
        )
        window.record_wait(now, max(0.0, now - arrived))

    def _consider_scale_up(self, spec: ModelSpec) -> None:
        """Add a replica of `spec` when requests wait past the policy's thresholds and one
        fits without evicting anything (replicas.scale_decision)."""
        limit = spec.max_replicas  # the model's parameter, else LOCALSERVE_MAX_REPLICAS
        if limit <= 1 or self._closed:
            return
        group = [m for m in self._replicas(spec.key) if self._compatible(m, spec)]
        if not group or any(m.loading for m in group):
            return  # nothing to copy yet, or one load at a time
        now = self.clock.monotonic()
        window = self.queue_windows.setdefault(spec.key, QueueWindow(self.scale_policy.window_s))
        waiting = self._queue_depth(spec.key)
        window.record_depth(now, waiting)
        policy = dataclasses.replace(
            self.scale_policy,
            max_replicas=limit,
            min_replicas=max(0, min(spec.min_replicas, limit)),
        )
        decision = scale_decision(policy, window, len(group), waiting, now)
        if not decision.add:
            return
        try:
            room = self._plan_room(spec)
        except ModelTooLargeError:
            return
        if room is None or room[0]:
            log.debug("not adding a replica of %s: no room without evicting", spec.key)
            return
        window.last_scale_up = now
        used = {m.replica for m in self._replicas(spec.key)}
        replica = next(i for i in range(len(used) + 1) if i not in used)
        log.info("adding replica %d of %s: %s", replica, spec.key, decision.reason)
        self._publish("scaled_up", model=spec.key, replica=replica, reason=decision.reason)
        self._start_load(spec, room[1], None, replica=replica, limit=limit)

    def _resources(self) -> Resources:
        """One reading of the probes for a placement decision."""
        settings = self.settings
        return Resources(
            limits=Limits.of(settings),
            gpus=tuple(self.gpu.gpus()),
            available_ram=self.memory.available_ram() if settings.max_ram_bytes is None else 0,
            stopping_bytes=sum(self.stopping.values()),
        )

    def _plan_room(self, spec: ModelSpec) -> tuple[list[LoadedModel], OffloadPlan] | None:
        """The idle models to evict and the GPU split for `spec`, or None to wait
        (placement.plan_room); raises ModelTooLargeError when it can never fit."""
        return plan_room(spec, list(self.models.values()), self._resources())

    def _start_load(
        self,
        spec: ModelSpec,
        plan: OffloadPlan,
        keep_alive_s: float | None,
        *,
        waiter: asyncio.Future[Lease] | None = None,
        blocks: tuple[str, ...] = (),
        replica: int = 0,
        limit: int = 1,
    ) -> None:
        cpus: tuple[int, ...] = ()
        if self.settings.cpu_replicas and limit > 1:
            with contextlib.suppress(AttributeError, OSError):  # no affinity on this OS
                cpus = cpu_sets(sorted(os.sched_getaffinity(0)), limit)[replica % limit]
        model = LoadedModel(
            spec=spec,
            estimate=plan.ram_bytes,
            plan=plan,
            keep_alive_s=keep_alive_s if keep_alive_s is not None else self.settings.keep_alive_s,
            replica=replica,
            cpus=cpus,
        )
        if waiter is not None:
            model.prefixes.remember(blocks)
            model.waiters.append((waiter, keep_alive_s))
        self.models[model.slot_key] = model
        log.info(
            "loading %s: %d/%d layers on GPU, estimated %.0f MiB RAM + %.0f MiB VRAM",
            spec.key,
            plan.layers,
            plan.total_layers,
            plan.ram_bytes / 2**20,
            plan.vram_bytes / 2**20,
        )
        self._publish(
            "load_started",
            model=spec.key,
            estimate=model.estimate,
            vram_estimate=plan.vram_bytes,
            gpu_layers=plan.layers,
        )
        self._spawn(self._load(model), f"load-{model.slot_key}")

    async def _load(self, model: LoadedModel) -> None:
        runner: RunnerProcess | None = None
        try:
            runner = await self.runner_pool.take()
            plan = model.plan
            result = await runner.load(
                str(model.spec.path),
                num_ctx=model.spec.num_ctx,
                num_gpu=plan.layers if plan else 0,
                tensor_split=tensor_split(plan),
                num_threads=len(model.cpus) or self.settings.num_threads,
                cpus=list(model.cpus) or None,
                adapt_threads=self.settings.adapt_threads,
                batch_invariant=self.settings.batch_invariant,
                flash_attn=self.settings.flash_attn,
                timeout=self.settings.load_timeout_s,
                num_parallel=model.spec.num_parallel,
                on_progress=lambda progress: self._post(
                    lambda: self._on_load_progress(model, progress)
                ),
            )
        except BaseException as exc:
            if runner is not None:
                await runner.kill()
            error = _load_error(model.spec, exc)
            self._post(lambda: self._on_load_failed(model, error))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        loaded_runner = runner
        self._post(lambda: self._on_loaded(model, loaded_runner, result))

    def _decoding(self) -> bool:
        """Whether any model has a request in flight (the spare waits for quiet)."""
        return any(m.in_flight for m in self.models.values())

    def _on_load_progress(self, model: LoadedModel, progress: float) -> None:
        if self.models.get(model.slot_key) is not model or not model.loading:
            return
        model.load_progress = progress
        self._publish("load_progress", model=model.spec.key, progress=progress)

    def _on_loaded(self, model: LoadedModel, runner: RunnerProcess, result: LoadResult) -> None:
        if self.models.get(model.slot_key) is not model or self._closed:
            self._spawn(runner.stop(), "stop-orphan")
            return
        if model.state is ModelState.LOADING:  # a DRAINING one stays so: it unloads when idle
            model.move_to(ModelState.READY)
        model.runner = runner
        model.load_result = result
        model.measured = result.rss
        model.vram_measured = self.gpu.process_vram(runner.pid)
        model.loaded_at = self.clock.time()
        runner.on_exit(lambda r: self._post(lambda: self._on_runner_exit(model, r)))
        log.info(
            "loaded %s in %.2fs (pid %d, rss %.0f MiB)",
            model.spec.key,
            result.load_duration_ns / 1e9,
            runner.pid,
            result.rss / 2**20,
        )
        self._publish(
            "loaded",
            model=model.spec.key,
            pid=runner.pid,
            rss=result.rss,
            load_duration=result.load_duration_ns,
        )
        self.runner_pool.refill_when_quiet(self._decoding)
        waiters, model.waiters = model.waiters, []
        for future, keep in waiters:
            caller = self.fairness.caller_of(future)
            if self.fairness.enabled and caller is not None:  # `_schedule` serves in turn
                deadline = self.clock.monotonic() + self.pending_timeout_s
                self.pending.append(_Pending(model.spec, future, keep, deadline, caller))
            else:
                self._grant(model, future, keep)
        if self.fairness.enabled:
            self._pass_slot_on(model)  # its first requests, in fair order
        if model.idle:
            self._arm_expiry(model)
        self._schedule()
        self._consider_scale_up(model.spec)  # requests that queued while it loaded

    def _on_load_failed(self, model: LoadedModel, error: LocalserveError) -> None:
        log.warning("loading %s failed: %s", model.spec.key, error)
        self._publish("load_failed", model=model.spec.key, error=str(error))
        if self.models.get(model.slot_key) is model:
            del self.models[model.slot_key]
            model.move_to(ModelState.STOPPING)
        for future, _ in model.waiters:
            _fail(future, error)
        model.waiters.clear()
        self._schedule()

    def _on_runner_exit(self, model: LoadedModel, runner: RunnerProcess) -> None:
        self.stopping.pop(runner.pid, None)
        if self.models.get(model.slot_key) is model and model.runner is runner:
            del self.models[model.slot_key]
            model.move_to(ModelState.STOPPING)
            if model.expiry is not None:
                model.expiry.cancel()
            log.warning("runner for %s exited unexpectedly (pid %d)", model.spec.key, runner.pid)
            self._publish("unloaded", model=model.spec.key, reason="crashed", pid=runner.pid)
        self._schedule()

    async def _watch_pressure(self) -> None:
        """Sample available RAM; when other programs push it under the reserve, reclaim."""
        while True:
            await asyncio.sleep(self.pressure_interval_s)
            self._post(self._check_pressure)

    def _check_pressure(self) -> None:
        for model in self.models.values():  # later decisions use measured RSS
            if model.serving and model.runner is not None and model.runner.rss:
                model.measured = model.runner.rss
                self._spawn(model.runner.refresh_stats(), "runner-stats")
        available = self.memory.available_ram()
        reserve = self.settings.ram_reserve_bytes
        for model in reclaim_victims(list(self.models.values()), available, reserve):
            log.warning(
                "available RAM %.0f MiB is below the %.0f MiB reserve: unloading idle %s",
                available / 2**20,
                reserve / 2**20,
                model.spec.key,
            )
            self._unload(model, "reclaim", available=available, reserve=reserve)

    def _unload(self, model: LoadedModel, reason: str, **details: Any) -> None:
        if self.models.get(model.slot_key) is model:
            del self.models[model.slot_key]
        if model.expiry is not None:
            model.expiry.cancel()
            model.expiry = None
        model.move_to(ModelState.STOPPING)
        runner = model.runner
        log.info("unloading %s (%s)", model.slot_key, reason)
        self._publish("unloaded", model=model.spec.key, reason=reason, **details)
        if self._replicas(model.spec.key):  # another runner of it stays
            self._publish("scaled_down", model=model.spec.key, replica=model.replica, reason=reason)
        if runner is not None and runner.alive:
            self.stopping[runner.pid] = model.size
            self._spawn(runner.stop(), f"stop-{model.slot_key}")


def _load_error(spec: ModelSpec, exc: BaseException) -> LocalserveError:
    """What a failed load tells its requests: it names the model, never the model's file."""
    name = spec.key
    if isinstance(exc, ModelLoadError):
        return ModelLoadError(
            f"model '{name}' cannot be loaded (invalid model file): {exc.message}"
        )
    if isinstance(exc, RunnerError):
        return RunnerError(f"model '{name}' failed to load: {exc.message}")
    if isinstance(exc, LocalserveError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        return RunnerError(f"loading model '{name}' was cancelled")
    return RunnerError(f"model '{name}' failed to load: {type(exc).__name__}")


def _fail(future: asyncio.Future[Lease], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
