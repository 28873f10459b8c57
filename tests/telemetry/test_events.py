"""The event stream: what a generation, a load and an unload publish, system samples,
per-request token rates, and slow consumers (bounded, coalesced, never slowing decode)."""

from __future__ import annotations

import asyncio
import socket
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonThread, read_sse_until_subscribed, running_daemon
from eventually import eventually_async
from gguf_factory import write_tiny_gguf

from localserve.client.http import LocalserveClient
from localserve.scheduling.gpu import GpuInfo
from localserve.telemetry.events import EventBus
from localserve.telemetry.monitor import EventCoalescer, ProgressReporter, SystemMonitor

LONG_CTX = 32768


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonThread]:
    with running_daemon(tmp_path, default_num_ctx=LONG_CTX) as running:
        running.daemon.monitor.interval = 0.2
        model = write_tiny_gguf(tmp_path / "a.gguf", "a", context_length=LONG_CTX)
        running.add_model("tiny", model)
        yield running


class Recorder:
    """Collect the SSE stream in the background; `until()` waits for a matching event.

    Entering waits for the stream's `subscribed` handshake (the daemon has subscribed this
    client to its bus), so every event triggered afterwards is on the stream."""

    def __init__(self, client: LocalserveClient, types: list[str] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self._client = client
        self._types = types
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recorder:
        subscribed = asyncio.Event()

        async def run() -> None:
            stream: AsyncIterator[dict[str, Any]] = self._client.events(
                self._types, subscribed=subscribed
            )
            async for event in stream:
                assert subscribed.is_set(), f"{event!r} came before the handshake"
                self.events.append(event)

        self._task = asyncio.create_task(run())
        handshake = asyncio.create_task(subscribed.wait())
        await asyncio.wait({self._task, handshake}, timeout=10, return_when=FIRST_COMPLETED)
        handshake.cancel()
        if not subscribed.is_set():
            if self._task.done():
                self._task.result()  # the stream failed: its error says why
            self._task.cancel()
            raise AssertionError("no `subscribed` event on /api/events within 10 s")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def find(self, kind: str, **match: Any) -> dict[str, Any] | None:
        for event in self.events:
            if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                return event
        return None

    async def until(self, kind: str, timeout: float = 30, **match: Any) -> dict[str, Any]:
        found = await eventually_async(
            lambda: self.find(kind, **match),
            timeout,
            what=lambda: f"a {kind!r} event matching {match} (seen: {self.kinds()})",
        )
        assert found is not None
        return found

    def kinds(self) -> list[str]:
        return [e["type"] for e in self.events]


async def test_a_generation_publishes_started_progress_then_finished_in_order(
    daemon: DaemonThread,
) -> None:
    async with LocalserveClient(daemon.base_url) as client, Recorder(client) as recorder:
        tokens = 0
        async for item in client.generate("tiny", "hi", options={"num_predict": 4000}):
            tokens += 0 if item["done"] else 1
        finished = await recorder.until("request_finished")
    assert tokens == 4000
    request = [e for e in recorder.events if e.get("request_id") == finished["request_id"]]
    kinds = [e["type"] for e in request]
    assert kinds[0] == "request_started" and kinds[-1] == "request_finished"
    assert set(kinds[1:-1]) == {"request_progress"} and len(kinds) >= 3
    progress = request[1:-1]
    counts = [e["eval_count"] for e in progress]
    assert counts == sorted(counts) and counts[-1] <= 4000
    assert all(e["tokens_per_second"] > 0 and e["model"] == "tiny:latest" for e in progress)
    assert finished["eval_count"] == 4000 and finished["prompt_tokens"] > 0
    assert finished["ttft_ms"] > 0 and finished["tokens_per_second"] > 0
    assert finished["endpoint"] == "generate"
    # The load happened first, on the same stream.
    order = recorder.kinds()
    assert order.index("load_started") < order.index("load_progress") < order.index("loaded")
    assert order.index("loaded") < order.index("request_started")
    load_progress = [e["progress"] for e in recorder.events if e["type"] == "load_progress"]
    assert load_progress == sorted(load_progress) and load_progress[-1] == 1.0


async def test_load_and_unload_events_carry_the_reason(daemon: DaemonThread) -> None:
    async with LocalserveClient(daemon.base_url) as client, Recorder(client) as recorder:
        await client.load("tiny")
        loaded = await recorder.until("loaded", model="tiny:latest")
        await client.unload("tiny")
        unloaded = await recorder.until("unloaded", model="tiny:latest")
        assert loaded["pid"] > 0 and loaded["load_duration"] > 0
        assert unloaded["reason"] == "request"
        # keep_alive 0 on a generation: unloaded when the request ends, for that reason.
        async for _ in client.generate("tiny", "x", options={"num_predict": 2}, keep_alive=0):
            pass
        await recorder.until("unloaded", reason="keep_alive")


async def test_system_samples_report_ram_and_each_runner_rss(daemon: DaemonThread) -> None:
    async with LocalserveClient(daemon.base_url) as client, Recorder(client, ["system"]) as rec:
        await client.load("tiny")
        loaded_pid = (await client.ps())[0]["pid"]

        def with_runner() -> dict[str, Any] | None:
            for event in rec.events:
                if any(r["pid"] == loaded_pid for r in event["runners"]):
                    return event
            return None

        sample = await eventually_async(
            with_runner, 10, what=f"a system sample listing the runner (pid {loaded_pid})"
        )
    assert set(rec.kinds()) == {"system"}  # ?types= filtered the stream
    assert 0 < sample["ram_available"] <= sample["ram_total"]
    assert sample["gpus"] == []  # NoGpuProbe: no NVML here, and no error either
    runner = next(r for r in sample["runners"] if r["pid"] == loaded_pid)
    assert runner["model"] == "tiny:latest" and runner["rss"] > 1_000_000


async def test_a_slow_event_consumer_neither_blocks_generation_nor_grows(
    daemon: DaemonThread,
) -> None:
    bus = daemon.daemon.events
    # An in-process subscriber that never reads, and an SSE client that never reads.
    stalled: list[asyncio.Queue[dict[str, Any]]] = []

    async def subscribe_and_stall(entered: asyncio.Event, leave: asyncio.Event) -> None:
        async with bus.subscribe() as queue:
            stalled.append(queue)
            entered.set()
            await leave.wait()

    entered, leave = asyncio.Event(), asyncio.Event()
    holder = asyncio.run_coroutine_threadsafe(subscribe_and_stall(entered, leave), daemon.loop)
    daemon.call(entered.wait())
    sse = socket.create_connection(("127.0.0.1", daemon.daemon.port))
    sse.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sse.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        read_sse_until_subscribed(sse)  # subscribed; from here on it never reads
        # Flood the bus far past a subscriber queue, then generate.
        for i in range(3000):
            daemon.loop.call_soon_threadsafe(lambda i=i: bus.publish("noise", n=i))
        async with LocalserveClient(daemon.base_url) as client:
            final: dict[str, Any] = {}
            async for item in client.generate("tiny", "hi", options={"num_predict": 3000}):
                final = item
        assert final["done"] is True and final["eval_count"] == 3000
        queue = stalled[0]
        assert queue.qsize() <= queue.maxsize
        assert bus.dropped > 0  # the stalled subscriber lost the oldest events, bounded
    finally:
        sse.close()
        daemon.loop.call_soon_threadsafe(leave.set)
        holder.result(10)


def test_the_coalescer_keeps_the_newest_sample_and_every_discrete_event_in_order() -> None:
    buffer = EventCoalescer(max_events=100)
    buffer.push({"type": "system", "ram_available": 1})
    buffer.push({"type": "loaded", "model": "a"})
    buffer.push({"type": "request_progress", "request_id": "r1", "eval_count": 10})
    buffer.push({"type": "request_progress", "request_id": "r2", "eval_count": 5})
    buffer.push({"type": "system", "ram_available": 2})
    buffer.push({"type": "request_progress", "request_id": "r1", "eval_count": 20})
    buffer.push({"type": "request_finished", "request_id": "r1"})
    drained = buffer.drain()
    assert [(e["type"], e.get("request_id")) for e in drained] == [
        ("loaded", None),
        ("request_progress", "r2"),
        ("system", None),
        ("request_progress", "r1"),
        ("request_finished", "r1"),
    ]
    assert drained[2]["ram_available"] == 2 and drained[3]["eval_count"] == 20
    assert buffer.coalesced == 2 and len(buffer) == 0


def test_the_coalescer_is_bounded_and_drops_the_oldest() -> None:
    buffer = EventCoalescer(max_events=10)
    for i in range(1000):
        buffer.push({"type": "loaded", "n": i})
        buffer.push({"type": "system", "n": i})
    assert len(buffer) == 10 and buffer.dropped == 991 and buffer.coalesced == 999
    drained = buffer.drain()
    assert drained[-1] == {"type": "system", "n": 999}
    assert [e["n"] for e in drained[:-1]] == list(range(991, 1000))


def test_progress_is_published_at_most_every_250_ms_with_the_window_rate() -> None:
    bus = EventBus()
    seen: list[dict[str, Any]] = []
    bus.add_listener(seen.append)
    now = [10.0]
    reporter = ProgressReporter(
        bus, model="m", endpoint="chat", request_id="r", started=9.9, clock=lambda: now[0]
    )
    for _ in range(100):  # 100 tokens at 1 ms each: 0.1 s, no event yet
        now[0] += 0.001
        reporter.token()
    assert seen == []
    for _ in range(200):  # then 200 more over 0.2 s
        now[0] += 0.001
        reporter.token()
    assert len(seen) == 1
    event = seen[0]
    assert event["type"] == "request_progress" and 250 <= event["eval_count"] <= 252
    assert event["tokens_per_second"] == pytest.approx(1000, rel=0.01)
    assert event["ttft_ms"] == pytest.approx(101, rel=0.01)


class FakeGpu:
    def gpus(self) -> list[GpuInfo]:
        return [GpuInfo(0, "Fake 24GB", total=24 * 2**30, free=20 * 2**30, utilization=37)]

    def process_vram(self, pid: int) -> int:
        return 3 * 2**30


def test_system_sample_reports_gpus_and_runner_vram_when_nvml_has_them() -> None:
    import os

    monitor = SystemMonitor(EventBus(), lambda: [], FakeGpu())
    sample = monitor.measure([("m:latest", os.getpid()), ("gone:latest", 2**22 + 12345)])
    assert sample["gpus"] == [
        {
            "index": 0,
            "name": "Fake 24GB",
            "vram_used": 4 * 2**30,
            "vram_total": 24 * 2**30,
            "utilization": 37,
        }
    ]
    assert [r["model"] for r in sample["runners"]] == ["m:latest"]  # a gone pid is skipped
    assert sample["runners"][0]["vram"] == 3 * 2**30


async def test_the_monitor_publishes_samples_until_stopped() -> None:
    bus = EventBus()
    seen: list[dict[str, Any]] = []
    bus.add_listener(seen.append)
    monitor = SystemMonitor(bus, lambda: [], FakeGpu(), interval=0.05)
    monitor.start()
    await eventually_async(lambda: len(seen) >= 2, what="two system samples")
    await monitor.stop()
    count = len(seen)
    # A second monitor on the same interval is the clock: it samples at once, then once
    # per interval, so by its fourth sample three intervals have passed, in which the
    # stopped one must have sent nothing.
    ticks: list[dict[str, Any]] = []
    clock_bus = EventBus()
    clock_bus.add_listener(ticks.append)
    clock = SystemMonitor(clock_bus, lambda: [], FakeGpu(), interval=0.05)
    clock.start()
    try:
        await eventually_async(lambda: len(ticks) >= 4, what="three intervals of a second monitor")
    finally:
        await clock.stop()
    assert count >= 2 and len(seen) == count
    assert monitor.latest is not None and monitor.latest["gpus"][0]["utilization"] == 37
