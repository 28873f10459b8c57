"""Live monitoring inside the daemon: system samples, per-request token rates, and the
coalescing buffer that keeps a slow `/api/events` client from lagging or growing memory.

Three pieces, all fed into (or out of) the in-process `EventBus`:

`SystemMonitor`
    An asyncio task that publishes a `system` event about every second::

        {"type": "system", "time": ..., "ram_total": B, "ram_available": B, "ram_used": B,
         "cpu_percent": 12.5,
         "gpus": [{"index", "name", "vram_used", "vram_total", "utilization"}],   # [] w/o NVML
         "runners": [{"model", "pid", "rss", "vram", "cpu_percent"}]}

    RAM comes from psutil, GPUs from the scheduler's `GpuProbe` (NVML; it reports no GPUs,
    without an error, where the driver or pynvml is missing), each runner's RSS from psutil
    by the pid in `scheduler.snapshot()`. The measuring runs in a worker thread, so the
    event loop never waits on psutil or NVML. The last sample stays in `latest` (the
    Prometheus collector reads it instead of measuring on every scrape).

`ProgressReporter`
    Counts the tokens of one generation and publishes `request_progress` at most every
    250 ms while it decodes::

        {"type": "request_progress", "request_id", "model", "endpoint", "eval_count",
         "tokens_per_second",   # over the last window (~250 ms)
         "ttft_ms", "elapsed_s"}

    `token()` is a counter increment and a clock read; publishing is a non-blocking bus
    call, so it never slows the token stream.

`EventCoalescer`
    The buffer between the bus and one SSE client. Samples that a newer one makes stale
    (`system`, `request_progress` per request, `queue` and `load_progress` per model, pull
    byte progress per file) replace their queued predecessor (the newer one moves to the
    end, so the stream stays in time order); every other event queues in order. The whole
    buffer is bounded: past `max_events` the oldest entry is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import psutil

from localserve.scheduling.gpu import GpuProbe
from localserve.scheduling.scheduler import ModelSnapshot
from localserve.telemetry.events import Event, EventBus

log = logging.getLogger("localserve.telemetry.monitor")

SYSTEM_INTERVAL_S = 1.0
PROGRESS_INTERVAL_S = 0.25
COALESCER_MAX_EVENTS = 1000

Snapshot = Callable[[], list[ModelSnapshot]]

_request_counter = itertools.count(1)
_request_prefix = f"{os.getpid():x}"


def new_request_id() -> str:
    """A short id that ties a request's started/progress/finished events together."""
    return f"r{_request_prefix}-{next(_request_counter)}"


# ---- per-request token rates -------------------------------------------------------------


class ProgressReporter:
    """Publish `request_progress` for one generation at most every `interval` seconds."""

    __slots__ = (
        "_clock",
        "_events",
        "_fields",
        "_first",
        "_interval",
        "_last_count",
        "_last_time",
        "_started",
        "count",
    )

    def __init__(
        self,
        events: EventBus,
        *,
        model: str,
        endpoint: str,
        request_id: str,
        started: float | None = None,
        interval: float = PROGRESS_INTERVAL_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """`started`: when the request arrived, on `clock` (TTFT counts from there)."""
        self._events = events
        self._fields = {"request_id": request_id, "model": model, "endpoint": endpoint}
        self._interval = interval
        self._clock = clock
        self._started = clock() if started is None else started
        self._first = 0.0
        self._last_time = 0.0
        self._last_count = 0
        self.count = 0

    def token(self) -> None:
        """Count one generated token; publish when the window has elapsed."""
        self.count += 1
        now = self._clock()
        if self.count == 1:
            self._first = self._last_time = now
            self._last_count = 1
            return
        elapsed = now - self._last_time
        if elapsed < self._interval:
            return
        rate = (self.count - self._last_count) / elapsed
        self._last_time = now
        self._last_count = self.count
        self._events.publish(
            "request_progress",
            **self._fields,
            eval_count=self.count,
            tokens_per_second=round(rate, 2),
            ttft_ms=round((self._first - self._started) * 1000, 2),
            elapsed_s=round(now - self._started, 3),
        )


# ---- system samples ---------------------------------------------------------------------


class SystemMonitor:
    """Publish a `system` sample every `interval` seconds while started."""

    def __init__(
        self,
        events: EventBus,
        snapshot: Snapshot,
        gpu: GpuProbe,
        *,
        interval: float = SYSTEM_INTERVAL_S,
    ) -> None:
        self.events = events
        self.snapshot = snapshot
        self.gpu = gpu
        self.interval = interval
        self.latest: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._processes: dict[int, psutil.Process] = {}

    def start(self) -> None:
        if self._task is None and self.interval > 0:
            self._task = asyncio.create_task(self._run(), name="system-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed sample must not end monitoring
                log.exception("system sample failed")
            await asyncio.sleep(self.interval)

    async def sample(self) -> dict[str, Any]:
        """Measure once, publish a `system` event, and return its fields."""
        # The snapshot is read on the event loop (the scheduler's structures are not
        # thread-safe); only the measuring goes to a worker thread.
        runners = [(row["model"], pid) for row in self.snapshot() if (pid := row["pid"])]
        fields = await asyncio.to_thread(self.measure, runners)
        self.latest = fields
        self.events.publish("system", **fields)
        return fields

    def measure(self, runners: list[tuple[str, int]]) -> dict[str, Any]:
        """Blocking: RAM, GPUs and per-runner RSS/VRAM (call from a worker thread)."""
        memory = psutil.virtual_memory()
        gpus = self.gpu.gpus()
        live: dict[int, psutil.Process] = {}
        rows = []
        for model, pid in runners:
            process = self._processes.get(pid)
            try:
                if process is None:
                    process = psutil.Process(pid)
                    process.cpu_percent(None)  # the first call only primes the counter
                rss = int(process.memory_info().rss)
                cpu = float(process.cpu_percent(None))
            except psutil.Error:
                continue
            live[pid] = process
            rows.append(
                {
                    "model": model,
                    "pid": pid,
                    "rss": rss,
                    "vram": self.gpu.process_vram(pid) if gpus else 0,
                    "cpu_percent": round(cpu, 1),
                }
            )
        self._processes = live
        return {
            "ram_total": int(memory.total),
            "ram_available": int(memory.available),
            "ram_used": int(memory.total - memory.available),
            "cpu_percent": float(psutil.cpu_percent(None)),
            "gpus": [
                {
                    "index": gpu.index,
                    "name": gpu.name,
                    "vram_used": gpu.used,
                    "vram_total": gpu.total,
                    "utilization": gpu.utilization,
                }
                for gpu in gpus
            ],
            "runners": rows,
        }


# ---- coalescing for slow stream clients -------------------------------------------------


def coalesce_key(event: Event) -> Hashable | None:
    """The identity of a sample that a newer one makes stale; None for discrete events."""
    kind = event.get("type")
    if kind == "system":
        return ("system",)
    if kind == "request_progress":
        return ("request_progress", event.get("request_id"))
    if kind in ("queue", "load_progress"):
        return (kind, event.get("model"))
    if kind == "pull" and event.get("completed") is not None:
        return ("pull", event.get("model"), event.get("digest"), event.get("status"))
    return None


class EventCoalescer:
    """A bounded, coalescing FIFO of events for one consumer (see the module docstring)."""

    def __init__(self, max_events: int = COALESCER_MAX_EVENTS) -> None:
        self.max_events = max_events
        self._items: OrderedDict[Hashable, Event] = OrderedDict()
        self._sequence = itertools.count()
        self._ready = asyncio.Event()
        self.coalesced = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, event: Event) -> None:
        key = coalesce_key(event)
        if key is None:
            key = ("event", next(self._sequence))
        elif self._items.pop(key, None) is not None:
            self.coalesced += 1
        self._items[key] = event
        while len(self._items) > self.max_events:
            self._items.popitem(last=False)
            self.dropped += 1
        self._ready.set()

    def drain(self) -> list[Event]:
        """Everything queued, oldest first; the buffer is then empty."""
        items = list(self._items.values())
        self._items.clear()
        self._ready.clear()
        return items

    async def wait(self, timeout: float | None = None) -> list[Event]:
        """Wait until something is queued (or `timeout` passes), then drain."""
        if not self._items:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        return self.drain()
