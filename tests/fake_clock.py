"""A clock the test moves: wall and monotonic time, and timers that fire (posting into
the loop, as real timers do) when `advance` passes their deadline."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any


class FakeTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self._timers: list[tuple[float, int, FakeTimer, Callable[..., Any], tuple[Any, ...]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeTimer:
        timer = FakeTimer()
        heapq.heappush(self._timers, (self.now + delay, next(self._order), timer, callback, args))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time on; every timer now due runs (in deadline order)."""
        self.now += seconds
        while self._timers and self._timers[0][0] <= self.now:
            _, _, timer, callback, args = heapq.heappop(self._timers)
            if not timer.cancelled:
                callback(*args)

    async def advance_and_settle(self, seconds: float) -> None:
        self.advance(seconds)
        for _ in range(5):
            await asyncio.sleep(0)
