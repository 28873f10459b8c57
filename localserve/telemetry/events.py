"""An in-process event bus: the scheduler, the puller and the API publish; subscribers
(the `/api/events` stream, metrics) read. Publishing never blocks: each subscriber has a
bounded queue, and when it is full the oldest event is dropped (a slow reader only
loses stale events, it never slows generation or grows memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

Event = dict[str, Any]


class EventBus:
    def __init__(self, queue_size: int = 1000) -> None:
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._listeners: list[Callable[[Event], None]] = []
        self.dropped = 0

    def publish(self, kind: str, **fields: Any) -> Event:
        event: Event = {"type": kind, "time": time.time(), **fields}
        for listener in self._listeners:
            listener(event)
        for queue in self._subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                    self.dropped += 1
            queue.put_nowait(event)
        return event

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """A synchronous callback run for every event (used for logging and metrics)."""
        self._listeners.append(listener)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
