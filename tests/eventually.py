"""`eventually(predicate, timeout)`: wait for a condition, fail loudly when it never holds.

Tests wait on conditions, never on sleeps: a loop that carries on silently after its
deadline hides the failure it was waiting for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy (returned); AssertionError on
    timeout, naming `what` (or the predicate) and its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"{name} did not hold within {timeout} s (last: {value!r})")
        time.sleep(interval)


async def eventually_async(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str = "",
) -> T:
    """`eventually` for asyncio tests: the predicate may be a plain or async callable."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"{name} did not hold within {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)
