"""Fair share: the order in which the scheduler serves waiting requests.

With fair share on (`Settings.fair_share`, the default), a request that carries a caller
(an API key: localserve.access) gets a lease only while one of its model's runner slots
is free (`has_free_slot`); the others wait in the scheduler, where this module orders
them: start-time fair queueing by caller (API key).
Each waiting request gets a start tag when it arrives:

    start = max(virtual time of the model, finish of the caller's previous request)
    finish = start + 1 / weight

and the waiting request with the highest priority, then the smallest start tag, then
the earliest arrival is served first. The virtual time is the start tag of the last
request granted. So a key that queued 500 requests holds tags 0..499 while a key arriving
later gets a tag near the current virtual time: it is served after at most one request
of each other waiting key, however long their queues. A key alone is served in arrival
order and gets every slot. Priority is strict (a higher priority is always served first);
weight is a share (a key of weight 2 gets two turns for another's one).

Without fair share, and for requests without a caller (keyless loopback requests, and
in-process callers), the scheduler grants every request at once (the runner queues what
its slots cannot take, first come first served), as before keys existed.

The module keeps no reference to the scheduler: the scheduler calls `arrive` (in its
`_on_acquire`), `order` (in `_schedule_pending`), `granted` (in `_grant`) and reads
`position`; everything runs in the scheduler's owner task.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

ANONYMOUS = "anonymous"


@dataclass
class QueueInfo:
    """What a request learned while it waited (read by the HTTP layer for its headers)."""

    position: int = 0  # 1-based place among the model's waiting requests at arrival; 0: none
    eta_s: float = 0.0  # the estimated wait then
    waited_s: float = 0.0  # how long it waited for its lease


@dataclass(frozen=True)
class Caller:
    """Who sends a request: an API key's name, its weight and priority."""

    name: str = ANONYMOUS
    weight: float = 1.0
    priority: int = 0
    request_tag: str | None = None  # a client's own id for its request, echoed in events
    queue: QueueInfo = field(default_factory=QueueInfo, compare=False)


@dataclass
class _Entry:
    model: str
    caller: Caller
    start: float
    seq: int
    arrived: float
    announced: int = 0  # the position last published (request_queued)


@dataclass
class _ModelClock:
    virtual: float = 0.0
    finish: dict[str, float] = field(default_factory=dict)  # caller -> last finish tag
    last_grant: float | None = None
    grant_interval_s: float | None = None  # EWMA of the time between grants while queued


T = TypeVar("T")
FutureOf = Callable[[T], "asyncio.Future[Any]"]


class FairShare:
    def __init__(self, enabled: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.clock = clock
        self._entries: dict[asyncio.Future[Any], _Entry] = {}
        self._models: dict[str, _ModelClock] = {}
        self._seq = itertools.count()

    def has_free_slot(self, in_flight: int, slots: int) -> bool:
        """Whether a lease may be granted now (always, without fair share)."""
        return not self.enabled or in_flight < slots

    def arrive(self, future: asyncio.Future[Any], model: str, caller: Caller | None) -> None:
        """Tag a request as it starts waiting; forgotten once its future is done. A
        request without a caller is not ordered (nor held back: the runner queues it)."""
        if caller is None:
            return
        who = caller
        clock = self._models.setdefault(model, _ModelClock())
        if not any(e.model == model for e in self._entries.values()):
            clock.finish.clear()  # nobody waits: past turns no longer count
        start = max(clock.virtual, clock.finish.get(who.name, 0.0))
        clock.finish[who.name] = start + 1.0 / max(who.weight, 1e-6)
        self._entries[future] = _Entry(model, who, start, next(self._seq), self.clock())
        future.add_done_callback(self._forget)

    def _forget(self, future: asyncio.Future[Any]) -> None:
        self._entries.pop(future, None)

    def caller_of(self, future: asyncio.Future[Any]) -> Caller | None:
        entry = self._entries.get(future)
        return entry.caller if entry else None

    def _rank(self, future: asyncio.Future[Any]) -> tuple[float, float, int]:
        entry = self._entries.get(future)
        if entry is None:  # not tagged (arrived before fair share knew it): first
            return (0.0, -1.0, -1)
        return (-entry.caller.priority, entry.start, entry.seq)

    def order(self, items: Iterable[T], future_of: Callable[[T], asyncio.Future[Any]]) -> list[T]:
        """`items` (the waiting requests) in the order they should be served."""
        listed = list(items)
        if not self.enabled:
            return listed
        return sorted(listed, key=lambda item: self._rank(future_of(item)))

    def granted(self, future: asyncio.Future[Any]) -> None:
        """A waiting request got its lease: the model's virtual time moves to its tag."""
        entry = self._entries.pop(future, None)
        if entry is None:
            return
        now = self.clock()
        clock = self._models.setdefault(entry.model, _ModelClock())
        clock.virtual = max(clock.virtual, entry.start)
        entry.caller.queue.waited_s = now - entry.arrived
        queued = any(e.model == entry.model for e in self._entries.values())
        if clock.last_grant is not None and queued:
            interval = now - clock.last_grant
            previous = clock.grant_interval_s
            smoothed = interval if previous is None else 0.8 * previous + 0.2 * interval
            clock.grant_interval_s = smoothed
        clock.last_grant = now

    def position(
        self, future: asyncio.Future[Any], waiting: Iterable[asyncio.Future[Any]]
    ) -> tuple[int, float]:
        """(1-based position among its model's waiting requests, estimated wait in s)."""
        entry = self._entries.get(future)
        if entry is None:
            return 0, 0.0
        same = [f for f in waiting if (e := self._entries.get(f)) and e.model == entry.model]
        ahead = sum(1 for f in same if self._rank(f) < self._rank(future))
        interval = self._models.get(entry.model, _ModelClock()).grant_interval_s
        eta = (ahead + 1) * interval if interval is not None else 0.0
        return ahead + 1, eta

    def announce(
        self, future: asyncio.Future[Any], waiting: Iterable[asyncio.Future[Any]]
    ) -> dict[str, Any] | None:
        """The `request_queued` event of a request still waiting after its arrival
        (also kept in its caller's QueueInfo), or None when it was served at once."""
        entry = self._entries.get(future)
        if entry is None or future.done():
            return None
        position, eta = self.position(future, waiting)
        entry.caller.queue.position = position
        entry.caller.queue.eta_s = eta
        return self._event(entry, position, eta)

    def _event(self, entry: _Entry, position: int, eta: float) -> dict[str, Any]:
        entry.announced = position
        return {
            "model": entry.model,
            "key": entry.caller.name,
            "request_tag": entry.caller.request_tag,
            "position": position,
            "eta_s": round(eta, 2),
        }

    def moved(self, waiting: list[asyncio.Future[Any]]) -> list[dict[str, Any]]:
        """`request_queued` events of tagged waiting requests (a client that asked to
        follow its place, e.g. the CLI's spinner) whose position changed."""
        events = []
        for future in waiting:
            entry = self._entries.get(future)
            if entry is None or entry.caller.request_tag is None or not entry.announced:
                continue
            position, eta = self.position(future, waiting)
            if position != entry.announced:
                events.append(self._event(entry, position, eta))
        return events

    def waiting_by_key(self, model: str) -> dict[str, int]:
        """How many requests of each key wait for `model` (for /api/ps)."""
        counts: dict[str, int] = {}
        for future, entry in self._entries.items():
            if entry.model == model and not future.done():
                counts[entry.caller.name] = counts.get(entry.caller.name, 0) + 1
        return counts
