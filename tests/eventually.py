"""`eventually(predicate, timeout)`: wait for a condition, fail loudly when it never holds.

Tests wait on conditions, never on sleeps: a loop that carries on silently after its
deadline hides the failure it was waiting for. Every wait in the suite goes through
these two functions, so a timeout always reads the same way: what was awaited, for how
long, and the predicate's last value.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


What = str | Callable[[], str]


def _timed_out(predicate: Callable[..., object], what: What, timeout: float, value: object) -> str:
    name = (what() if callable(what) else what) or getattr(predicate, "__name__", repr(predicate))
    return f"{name} did not hold within {timeout} s (last: {value!r})"


def eventually(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: What = ""
) -> T:
    """Poll `predicate` until it returns something truthy (returned); AssertionError on
    timeout, naming `what` (or the predicate) and its last value. `what` may be a callable,
    called at the timeout, to describe the state the wait ended in."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(predicate, what, timeout, value))
        time.sleep(interval)


async def eventually_async(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    interval: float = 0.01,
    what: What = "",
    pause: Callable[[], Awaitable[object]] | None = None,
) -> T:
    """`eventually` for asyncio tests: the predicate may be a plain or async callable.

    Between two tries it awaits `pause()` (default: `asyncio.sleep(interval)`); a Textual
    test passes the Pilot's pause, so the app processes its messages meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(predicate, what, timeout, value))
        await (pause() if pause is not None else asyncio.sleep(interval))
