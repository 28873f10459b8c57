"""The fair-share order (start-time fair queueing by caller) on its own, and in the
scheduler with fake runners: who gets the slot next."""

from __future__ import annotations

import asyncio
from typing import Any

from localserve.scheduling.fairness import Caller, FairShare


def _serve_all(fair: FairShare, waiting: list[tuple[asyncio.Future[Any], str]]) -> list[str]:
    """Grant the waiting requests one at a time in fair order; the callers in that order."""
    served = []
    while waiting:
        first = fair.order(waiting, lambda item: item[0])[0]
        waiting.remove(first)
        fair.granted(first[0])
        served.append(first[1])
    return served


async def test_a_late_key_is_served_next_not_after_the_flood() -> None:
    fair = FairShare()
    loop = asyncio.get_running_loop()
    waiting = []
    for _ in range(6):
        future: asyncio.Future[Any] = loop.create_future()
        fair.arrive(future, "m", Caller("batch"))
        waiting.append((future, "batch"))
    first = fair.order(waiting, lambda item: item[0])[0]
    waiting.remove(first)
    fair.granted(first[0])  # the flood's first is running
    late: asyncio.Future[Any] = loop.create_future()
    fair.arrive(late, "m", Caller("chat"))
    waiting.append((late, "chat"))
    assert fair.position(late, [f for f, _ in waiting]) == (1, 0.0)  # next, not 6th
    assert _serve_all(fair, waiting) == ["chat"] + ["batch"] * 5


async def test_weights_share_turns_and_priority_goes_first() -> None:
    fair = FairShare()
    loop = asyncio.get_running_loop()
    waiting = []
    for name, weight, priority in [("a", 1.0, 0)] * 4 + [("b", 2.0, 0)] * 4 + [("vip", 1.0, 5)]:
        future: asyncio.Future[Any] = loop.create_future()
        fair.arrive(future, "m", Caller(name, weight, priority))
        waiting.append((future, name))
    served = _serve_all(fair, waiting)
    assert served[0] == "vip"
    assert served[1:7].count("b") == 4 and served[1:7].count("a") == 2  # b twice as often


async def test_without_fair_share_the_order_is_arrival() -> None:
    fair = FairShare(enabled=False)
    loop = asyncio.get_running_loop()
    items = []
    for name in ("a", "a", "b"):
        future: asyncio.Future[Any] = loop.create_future()
        fair.arrive(future, "m", Caller(name))
        items.append((future, name))
    assert [n for _, n in fair.order(items, lambda item: item[0])] == ["a", "a", "b"]
    assert fair.has_free_slot(in_flight=10, slots=1)


async def test_waiting_counts_per_key_are_kept_until_granted_or_abandoned() -> None:
    fair = FairShare()
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(3)]
    for future, name in zip(futures, ("a", "a", "b"), strict=True):
        fair.arrive(future, "m", Caller(name))
    assert fair.waiting_by_key("m") == {"a": 2, "b": 1}
    fair.granted(futures[0])
    futures[2].cancel()
    await asyncio.sleep(0)  # done callbacks run
    assert fair.waiting_by_key("m") == {"a": 1}


# ---- in the scheduler, with fake runners (tests/scheduling/test_scheduler.py's World) ----


async def test_the_scheduler_grants_a_freed_slot_to_the_next_key_in_turn(tmp_path: Any) -> None:
    from fake_clock import FakeClock
    from test_scheduler import World, spec

    clock = FakeClock()
    world = World(tmp_path, clock=clock, pending_timeout_s=120)
    model = spec("a")
    scheduler = world.scheduler
    running = await scheduler.acquire(model, None, Caller("batch"))  # the one slot
    flood = [
        asyncio.ensure_future(scheduler.acquire(model, None, Caller("batch"))) for _ in range(4)
    ]
    await world.settle()
    chat = asyncio.ensure_future(scheduler.acquire(model, None, Caller("chat")))
    await world.settle()
    assert not chat.done() and not any(f.done() for f in flood)  # every one waits its turn
    (row,) = scheduler.snapshot()
    assert row["in_flight"] == 1 and row["queue_depth"] == 5
    assert row["queued_by_key"] == {"batch": 4, "chat": 1}
    queued = [e for e in world.log if e["type"] == "request_queued" and e["key"] == "chat"]
    assert queued and queued[0]["position"] <= 2
    await clock.advance_and_settle(300)  # past the memory wait's deadline: slots never time out
    await world.settle()
    assert not chat.done() and not any(f.done() for f in flood)

    order = []
    held = running
    for _ in range(5):
        held.release()
        await world.settle()
        granted = [f for f in [*flood, chat] if f.done() and f.result() not in order]
        assert len(granted) == 1  # one slot: one grant per release
        order.append(granted[0].result())
        held = granted[0].result()
    held.release()
    assert order.index(chat.result()) <= 1  # chat went first or second, not fifth


async def test_without_a_caller_the_scheduler_grants_at_once_as_before(tmp_path: Any) -> None:
    from test_scheduler import World, spec

    world = World(tmp_path)
    leases = await asyncio.gather(*(world.scheduler.acquire(spec("a")) for _ in range(3)))
    assert world.scheduler.snapshot()[0]["in_flight"] == 3  # the runner queues them
    for lease in leases:
        lease.release()
