"""The scheduler: the single owner of every load and unload decision.

One asyncio task (`_run`) executes all state changes, one message at a time; everything
else posts messages to it (`_post`). Loads run in their own tasks and post their result
back. Callers get a `Lease` on a ready runner from `acquire()` and must `release()` it.

Policy:
- load on first request; requests for a loading model wait for it; one load per model;
- keep a model for its keep_alive after its last request (0: unload now, <0: forever);
- keep several models while they fit the RAM budget and `max_loaded` (0 = no cap);
- evict least-recently-used idle models to make room, pinned (forever) ones last;
  never a model with requests in flight: the load waits (bounded), then 503;
- a model that can never fit is refused at once, naming its need and the budget;
- bound each model's waiting requests (`max_queue`): past it, 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
from localserve.scheduling.gpu import GpuInfo, GpuProbe, NvmlGpuProbe, OffloadPlan, plan_offload
from localserve.store.gguf_facts import ModelFacts
from localserve.telemetry.events import EventBus

log = logging.getLogger("localserve.scheduling.scheduler")
COMPUTE_OVERHEAD_BYTES = 64 * 1024**2
# The next spare runner starts once no model is decoding (its start, ~0.2 s of CPU for
# Python and llama_cpp, stalls a decoding runner's threads: it cost a first answer ~35 %
# of its tok/s on 2 cores), but no sooner than this after a load, and no later than the
# deadline.
SPARE_REFILL_DELAY_S = 0.25
SPARE_REFILL_DEADLINE_S = 5.0
FOREVER_WALL = 253402300799.0  # 9999-12-31T23:59:59Z, how /api/ps shows "forever"


class MemoryProbe(Protocol):
    def available_ram(self) -> int: ...

    def total_ram(self) -> int: ...


class PsutilMemoryProbe:
    def available_ram(self) -> int:
        import psutil

        return int(psutil.virtual_memory().available)

    def total_ram(self) -> int:
        import psutil

        return int(psutil.virtual_memory().total)


class RunnerFactory(Protocol):
    async def __call__(self) -> RunnerProcess: ...


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

    @property
    def key(self) -> str:
        return self.name.display()


@dataclass(eq=False)
class LoadedModel:
    spec: ModelSpec
    estimate: int  # RAM bytes expected (the part not offloaded)
    plan: OffloadPlan | None = None
    state: str = "loading"  # loading | ready | stopping
    runner: RunnerProcess | None = None
    in_flight: int = 0
    waiters: list[tuple[asyncio.Future[Lease], float | None]] = field(default_factory=list)
    keep_alive_s: float = 300.0
    expires_at: float | None = None  # wall clock; None while busy or pinned
    expiry: asyncio.TimerHandle | None = None
    last_used: float = field(default_factory=time.monotonic)
    loaded_at: float = 0.0
    measured: int = 0
    load_result: LoadResult | None = None
    unload_when_idle: bool = False
    vram_measured: int = 0
    load_progress: float = 0.0  # llama.cpp's load progress, 0..1, while loading

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
        return self.state == "ready" and self.in_flight == 0 and not self.waiters


@dataclass(eq=False)
class Lease:
    """A request's hold on a ready runner; release exactly once."""

    model: LoadedModel
    runner: RunnerProcess
    scheduler: Scheduler
    released: bool = False

    def release(self, keep_alive_s: float | None = None) -> None:
        if not self.released:
            self.released = True
            self.scheduler._post(lambda: self.scheduler._on_release(self.model, keep_alive_s))


@dataclass(eq=False)
class _Pending:
    spec: ModelSpec
    future: asyncio.Future[Lease]
    keep_alive_s: float | None
    deadline: float


async def spawn_runner() -> RunnerProcess:
    return await RunnerProcess.spawn()


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
    ) -> None:
        self.settings = settings
        self.events = events or EventBus()
        self.memory = memory or PsutilMemoryProbe()
        self.gpu: GpuProbe = gpu or NvmlGpuProbe()
        self.runner_pool = SpareRunnerPool(runner_factory or spawn_runner, settings.spare_runner)
        self.pending_timeout_s = pending_timeout_s
        self.pressure_interval_s = pressure_interval_s
        self.models: dict[str, LoadedModel] = {}
        self.stopping: dict[int, int] = {}  # runner pid -> bytes still held while it exits
        self.pending: list[_Pending] = []
        self._inbox: asyncio.Queue[Callable[[], None]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._refill_deadline: float | None = None
        self._queue_seen: dict[str, int] = {}

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="scheduler")
            if self.pressure_interval_s > 0:
                self._spawn(self._watch_pressure(), "memory-pressure")

    async def close(self) -> None:
        """Refuse new work, fail waiting requests, stop every runner."""
        self._closed = True
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

    async def acquire(self, spec: ModelSpec, keep_alive_s: float | None = None) -> Lease:
        """Wait for a ready runner for `spec`; raises BusyError, ModelTooLargeError, ..."""
        if self._closed:
            raise BusyError("the daemon is shutting down")
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._post(lambda: self._on_acquire(spec, future, keep_alive_s))
        try:
            return await future
        except asyncio.CancelledError:
            self._post(lambda: self._on_abandon(future))
            raise

    def unload(self, name: ModelName) -> asyncio.Future[bool]:
        """Unload a model now, or as soon as its requests finish. Resolves True if loaded."""
        result: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def handle() -> None:
            model = self.models.get(name.display())
            if model is None:
                result.set_result(False)
                return
            model.keep_alive_s = 0
            if model.idle:
                self._unload(model, "request")
            else:
                model.unload_when_idle = True
                model.expires_at = time.time()
            result.set_result(True)

        self._post(handle)
        return result

    def snapshot(self) -> list[dict[str, Any]]:
        """A read-only view for /api/ps; never used to make a decision."""
        rows = []
        for model in sorted(self.models.values(), key=lambda m: -m.last_used):
            expires: float
            if model.unload_when_idle:
                expires = time.time()  # "Stopping..."
            elif model.pinned:
                expires = FOREVER_WALL
            elif model.expires_at is not None:
                expires = model.expires_at
            else:  # busy or loading: the keep-alive clock starts when it goes idle
                expires = time.time() + model.keep_alive_s
            rows.append(
                {
                    "model": model.spec.key,
                    "digest": model.spec.digest,
                    "state": "stopping" if model.unload_when_idle else model.state,
                    "load_progress": 1.0 if model.state != "loading" else model.load_progress,
                    "size": model.size + model.vram,
                    "size_vram": model.vram,
                    "gpu_layers": model.plan.layers if model.plan else 0,
                    "context_length": model.spec.num_ctx,
                    "expires_at": expires,
                    "in_flight": model.in_flight,
                    "slots": model.spec.num_parallel,
                    "slots_busy": min(model.in_flight, model.spec.num_parallel),
                    "queue_depth": self._queue_depth(model.spec.key),
                    "pid": model.runner.pid if model.runner else None,
                    "threads": model.runner.threads if model.runner else 0,
                    "facts": model.spec.facts,
                    "busy": model.in_flight > 0,
                }
            )
        return rows

    # ---- message handlers (run only inside the owner task) ------------------------------

    def _queue_depth(self, key: str) -> int:
        model = self.models.get(key)
        waiting = sum(1 for p in self.pending if p.spec.key == key)
        if model is not None:
            waiting += len(model.waiters)
            waiting += max(0, model.in_flight - model.spec.num_parallel)
        return waiting

    def _on_acquire(
        self, spec: ModelSpec, future: asyncio.Future[Lease], keep_alive_s: float | None
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
        self.pending.append(
            _Pending(spec, future, keep_alive_s, time.monotonic() + self.pending_timeout_s)
        )
        asyncio.get_running_loop().call_later(
            self.pending_timeout_s + 0.01, self._post, self._expire_pending
        )
        self._schedule()

    def _on_abandon(self, future: asyncio.Future[Lease]) -> None:
        if future.done() and not future.cancelled() and future.exception() is None:
            # Granted, but the request was cancelled before it saw the lease.
            future.result().release()
            return
        self.pending = [p for p in self.pending if p.future is not future]
        for model in self.models.values():
            model.waiters = [w for w in model.waiters if w[0] is not future]
        self._schedule()

    def _grant(self, model: LoadedModel, future: asyncio.Future[Lease], keep: float | None) -> None:
        if future.done() or model.runner is None:
            return
        model.in_flight += 1
        model.last_used = time.monotonic()
        if keep is not None:
            model.keep_alive_s = keep
        model.expires_at = None
        if model.expiry is not None:
            model.expiry.cancel()
            model.expiry = None
        future.set_result(Lease(model, model.runner, self))

    def _on_release(self, model: LoadedModel, keep_alive_s: float | None) -> None:
        model.in_flight = max(0, model.in_flight - 1)
        model.last_used = time.monotonic()
        if keep_alive_s is not None:
            model.keep_alive_s = keep_alive_s
        if self.models.get(model.spec.key) is model and model.idle:
            self._arm_expiry(model)
        self._schedule()

    def _arm_expiry(self, model: LoadedModel) -> None:
        if model.unload_when_idle or model.keep_alive_s == 0:
            self._unload(model, "keep_alive")
            return
        if model.expiry is not None:
            model.expiry.cancel()
            model.expiry = None
        if model.pinned:
            model.expires_at = None
            return
        model.expires_at = time.time() + model.keep_alive_s
        model.expiry = asyncio.get_running_loop().call_later(
            model.keep_alive_s, self._post, lambda: self._on_expire(model)
        )

    def _on_expire(self, model: LoadedModel) -> None:
        if (
            self.models.get(model.spec.key) is model
            and model.idle
            and model.expires_at is not None
            and model.expires_at <= time.time() + 0.05
        ):
            self._unload(model, "expired")
            self._schedule()

    def _expire_pending(self) -> None:
        now = time.monotonic()
        for pending in [p for p in self.pending if p.deadline <= now]:
            self.pending.remove(pending)
            _fail(
                pending.future,
                BusyError(
                    f"timed out waiting for memory to load {pending.spec.key}: every loaded "
                    "model is busy",
                    retry_after=5,
                ),
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
        for pending in list(self.pending):
            if pending.future.done():
                self.pending.remove(pending)
                continue
            spec = pending.spec
            model = self.models.get(spec.key)
            if model is not None and not self._compatible(model, spec):
                if not model.idle:
                    continue  # wait for its requests to finish, then reload
                self._unload(model, "reload")
                model = None
            if model is not None:
                self.pending.remove(pending)
                if model.state == "ready":
                    self._grant(model, pending.future, pending.keep_alive_s)
                else:
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
            self._start_load(spec, pending, plan)

    def _budget(self) -> tuple[int, int]:
        """(RAM bytes available for new models now, RAM bytes our models hold)."""
        held = sum(m.size for m in self.models.values()) + sum(self.stopping.values())
        loading = sum(m.size for m in self.models.values() if m.state == "loading")
        if self.settings.max_ram_bytes is not None:
            return self.settings.max_ram_bytes - held, held
        available = self.memory.available_ram() - self.settings.ram_reserve_bytes - loading
        return available, held

    def _gpu_room(self, returned: list[LoadedModel]) -> list[GpuInfo]:
        """GPUs as seen by a new load: free memory after our own models' allocations.

        Our models' VRAM is counted from their plans (a loading model has not allocated
        yet; NVML would not show it), other programs' use from NVML. `returned` models'
        VRAM is counted as free (they are about to be evicted).
        """
        gpus = self.gpu.gpus()
        ours_all = [0] * len(gpus)
        ours_allocated = [0] * len(gpus)
        for model in [*self.models.values()]:
            for index, amount in enumerate(model.per_gpu[: len(gpus)]):
                if model not in returned:
                    ours_all[index] += amount
                if model.state == "ready":
                    ours_allocated[index] += amount
        room = []
        for index, info in enumerate(gpus):
            others = max(0, info.used - ours_allocated[index])
            free = max(0, info.total - others - ours_all[index])
            room.append(GpuInfo(info.index, info.name, info.total, free, info.utilization))
        return room

    def _offload(self, spec: ModelSpec, returned: list[LoadedModel]) -> OffloadPlan:
        held_vram = sum(m.vram for m in self.models.values() if m not in returned)
        cap = None
        if self.settings.max_vram_bytes is not None:
            cap = max(0, self.settings.max_vram_bytes - held_vram)
        return plan_offload(
            spec.facts,
            spec.num_ctx * spec.num_parallel,
            self._gpu_room(returned),
            reserve_bytes=self.settings.vram_reserve_bytes,
            requested_layers=spec.num_gpu,
            vram_cap=cap,
            compute_overhead=COMPUTE_OVERHEAD_BYTES,
        )

    def _plan_room(self, spec: ModelSpec) -> tuple[list[LoadedModel], OffloadPlan] | None:
        """The idle models to evict and the GPU split for `spec`, or None to wait.

        Raises ModelTooLargeError when the model cannot fit even with nothing else loaded.
        """
        candidates = sorted(
            (m for m in self.models.values() if m.idle),
            key=lambda m: (m.pinned, m.last_used),
        )
        victims: list[LoadedModel] = []
        plan = self._offload(spec, victims)
        # Prefer a full GPU offload: evict idle models holding VRAM while that helps.
        if not plan.full and spec.num_gpu is None and any(m.vram for m in candidates):
            best_case = self._offload(spec, [m for m in candidates if m.vram])
            if best_case.layers > plan.layers:
                for victim in [m for m in candidates if m.vram]:
                    victims.append(victim)
                    plan = self._offload(spec, victims)
                    if plan.full or plan.layers >= best_case.layers:
                        break
        need = plan.ram_bytes
        free, held = self._budget()
        free += sum(v.size for v in victims)
        best_ram = self._offload(spec, list(self.models.values())).ram_bytes
        if best_ram > free + held - sum(v.size for v in victims):
            budget = free + held - sum(v.size for v in victims)
            raise ModelTooLargeError(
                f"model {spec.key} needs about {best_ram / 2**20:.0f} MiB of RAM but the "
                f"memory budget is {max(budget, 0) / 2**20:.0f} MiB"
            )
        remaining = [m for m in candidates if m not in victims]
        count = len(self.models) - len(victims)
        cap = self.settings.max_loaded
        while free < need or (cap and count >= cap):
            if not remaining:
                return None
            victim = remaining.pop(0)
            victims.append(victim)
            free += victim.size
            count -= 1
        return victims, plan

    def _start_load(self, spec: ModelSpec, first: _Pending, plan: OffloadPlan) -> None:
        model = LoadedModel(
            spec=spec,
            estimate=plan.ram_bytes,
            plan=plan,
            keep_alive_s=(
                first.keep_alive_s if first.keep_alive_s is not None else self.settings.keep_alive_s
            ),
        )
        model.waiters.append((first.future, first.keep_alive_s))
        self.models[spec.key] = model
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
        self._spawn(self._load(model), f"load-{spec.key}")

    async def _load(self, model: LoadedModel) -> None:
        runner: RunnerProcess | None = None
        try:
            runner = await self.runner_pool.take()
            plan = model.plan
            result = await runner.load(
                str(model.spec.path),
                num_ctx=model.spec.num_ctx,
                num_gpu=plan.layers if plan else 0,
                tensor_split=_tensor_split(plan),
                num_threads=self.settings.num_threads,
                adapt_threads=self.settings.adapt_threads,
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

    def _refill_spare_when_quiet(self, delay: float = 0.0) -> None:
        """Start the next spare runner once no model decodes (see SPARE_REFILL_DELAY_S)."""

        def check() -> None:
            if self._refill_deadline is None or self._closed:
                return
            decoding = any(m.in_flight for m in self.models.values())
            if decoding and time.monotonic() < self._refill_deadline:
                self._refill_spare_when_quiet(SPARE_REFILL_DELAY_S)
                return
            self._refill_deadline = None
            self.runner_pool.refill()

        asyncio.get_running_loop().call_later(delay, self._post, check)

    def _on_load_progress(self, model: LoadedModel, progress: float) -> None:
        if self.models.get(model.spec.key) is not model or model.state != "loading":
            return
        model.load_progress = progress
        self._publish("load_progress", model=model.spec.key, progress=progress)

    def _on_loaded(self, model: LoadedModel, runner: RunnerProcess, result: LoadResult) -> None:
        if self.models.get(model.spec.key) is not model or self._closed:
            self._spawn(runner.stop(), "stop-orphan")
            return
        model.state = "ready"
        model.runner = runner
        model.load_result = result
        model.measured = result.rss
        model.vram_measured = self.gpu.process_vram(runner.pid)
        model.loaded_at = time.time()
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
        self._refill_deadline = time.monotonic() + SPARE_REFILL_DEADLINE_S
        self._refill_spare_when_quiet(SPARE_REFILL_DELAY_S)
        waiters, model.waiters = model.waiters, []
        for future, keep in waiters:
            self._grant(model, future, keep)
        if model.idle:
            self._arm_expiry(model)
        self._schedule()

    def _on_load_failed(self, model: LoadedModel, error: LocalserveError) -> None:
        log.warning("loading %s failed: %s", model.spec.key, error)
        self._publish("load_failed", model=model.spec.key, error=str(error))
        if self.models.get(model.spec.key) is model:
            del self.models[model.spec.key]
        for future, _ in model.waiters:
            _fail(future, error)
        model.waiters.clear()
        self._schedule()

    def _on_runner_exit(self, model: LoadedModel, runner: RunnerProcess) -> None:
        self.stopping.pop(runner.pid, None)
        if self.models.get(model.spec.key) is model and model.runner is runner:
            del self.models[model.spec.key]
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
            if model.state == "ready" and model.runner is not None and model.runner.rss:
                model.measured = model.runner.rss
                self._spawn(model.runner.refresh_stats(), "runner-stats")
        available = self.memory.available_ram()
        reserve = self.settings.ram_reserve_bytes
        if available >= reserve:
            return
        idle = sorted(
            (m for m in self.models.values() if m.idle), key=lambda m: (m.pinned, m.last_used)
        )
        freed = 0
        for model in idle:
            if available + freed >= reserve:
                break
            log.warning(
                "available RAM %.0f MiB is below the %.0f MiB reserve: unloading idle %s",
                available / 2**20,
                reserve / 2**20,
                model.spec.key,
            )
            freed += model.size
            self._unload(model, "reclaim", available=available, reserve=reserve)

    def _unload(self, model: LoadedModel, reason: str, **details: Any) -> None:
        if self.models.get(model.spec.key) is model:
            del self.models[model.spec.key]
        if model.expiry is not None:
            model.expiry.cancel()
            model.expiry = None
        model.state = "stopping"
        runner = model.runner
        log.info("unloading %s (%s)", model.spec.key, reason)
        self._publish("unloaded", model=model.spec.key, reason=reason, **details)
        if runner is not None and runner.alive:
            self.stopping[runner.pid] = model.size
            self._spawn(runner.stop(), f"stop-{model.spec.key}")


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


def _tensor_split(plan: OffloadPlan | None) -> list[float] | None:
    """llama.cpp's tensor_split for a multi-GPU plan (proportions per GPU)."""
    if plan is None or len(plan.per_gpu) < 2 or not sum(plan.per_gpu):
        return None
    total = sum(plan.per_gpu)
    return [amount / total for amount in plan.per_gpu]


class SpareRunnerPool:
    """Keeps one runner process started ahead of need (llama_cpp already imported), so
    a swap pays only for the model load. The first spare is made after the first load.
    """

    def __init__(self, factory: RunnerFactory, enabled: bool) -> None:
        self._factory = factory
        self._enabled = enabled
        self._spare: asyncio.Task[RunnerProcess] | None = None

    async def take(self) -> RunnerProcess:
        spare, self._spare = self._spare, None
        runner: RunnerProcess | None = None
        if spare is not None:
            with contextlib.suppress(Exception):
                runner = await spare
            if runner is not None and not runner.alive:
                runner = None
        if runner is None:
            runner = await self._factory()
        return runner

    def refill(self) -> None:
        """Start the next spare (called once a load is done, not to compete with it)."""
        if self._enabled and self._spare is None:
            self._spare = asyncio.create_task(self._factory(), name="spare-runner")

    def pids(self) -> set[int]:
        """The spare runner's pid, once it has started."""
        spare = self._spare
        if spare is None or not spare.done() or spare.cancelled() or spare.exception():
            return set()
        return {spare.result().pid}

    async def close(self) -> None:
        spare, self._spare = self._spare, None
        if spare is None:
            return
        if not spare.done():
            spare.cancel()
        with contextlib.suppress(BaseException):
            runner = await spare
            await runner.stop()


def _fail(future: asyncio.Future[Lease], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
