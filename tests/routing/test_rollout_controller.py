"""The rollout controller on a fake clock: steps advance at each window's end, a breach
(errors, slowness, poor answers) sends all traffic back to the stable version at once,
a quiet window waits, pause/resume/abort, and a restart mid-rollout resumes it.

The routing service is real (route table on disk, event bus, per-version figures fed
from request events as `Generation` publishes them); the requests themselves are events
published on the bus, so a test says exactly what the candidate did in a window.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_clock import FakeClock
from gguf_factory import write_tiny_gguf

from localserve.errors import BadRequestError, ConflictError, NotFoundError
from localserve.names import ModelName
from localserve.routing.service import Routing
from localserve.routing.table import Target
from localserve.store.store import Store
from localserve.telemetry.events import EventBus

ROUTE = "assistant:latest"


class World:
    def __init__(self, root: Path, clock: FakeClock, events: EventBus | None = None) -> None:
        self.root = root
        self.clock = clock
        self.events = events or EventBus()
        self.store = Store(root)
        self.seen: list[dict[str, Any]] = []
        self.events.add_listener(self.seen.append)
        self.routing = Routing(
            self.store,
            self.events,
            load=self._load,
            snapshot=self._snapshot,
            clock=clock,
            rng=random.Random(3),
        )

    async def _load(self, version: str) -> None:
        return None

    def _snapshot(self) -> list[Any]:
        return [{"model": m.name.display(), "state": "ready"} for m in self.store.list()]

    def served(self, version: str, *, ttft_ms: float = 100, rate: float = 50, n: int = 1) -> None:
        for _ in range(n):
            self.events.publish(
                "request_finished",
                route=ROUTE,
                model=version,
                ttft_ms=ttft_ms,
                tokens_per_second=rate,
                eval_count=10,
                done_reason="stop",
            )

    def failed(self, version: str, n: int = 1) -> None:
        for _ in range(n):
            self.events.publish("request_ended", route=ROUTE, model=version, outcome="error")

    def kinds(self, prefix: str = "rollout_") -> list[str]:
        return [e["type"] for e in self.seen if e["type"].startswith(prefix)]

    def targets(self) -> list[Target]:
        return self.routing.get("assistant").targets

    async def tick(self, seconds: float) -> None:
        await self.clock.advance_and_settle(seconds)
        await self.routing.rollouts.settle()


@pytest.fixture
def models(tmp_path: Path) -> Path:
    store = Store(tmp_path / "store")
    for name, char in (("stable:v1", "a"), ("cand:v2", "b")):
        digest = store.import_file(write_tiny_gguf(tmp_path / f"{char}.gguf", char))
        store.create_model(ModelName.parse(name), digest)
    return tmp_path / "store"


@pytest.fixture
async def world(models: Path) -> Iterator[World]:
    clock = FakeClock()
    world = World(models, clock)
    await world.routing.start()
    await world.routing.set("assistant", [Target("stable:v1", 1)], who="cli")
    yield world
    await world.routing.stop()


BODY = {"to": "cand:v2", "steps": "10,50", "every": "10m", "min_requests": 2}


async def test_steps_advance_each_window_and_the_rollout_completes(world: World) -> None:
    state = await world.routing.start_rollout("assistant", BODY)
    assert state.steps == [10.0, 50.0, 100.0]
    assert world.targets() == [Target("stable:v1", 90), Target("cand:v2", 10)]
    world.served("cand:v2", n=3)
    world.served("stable:v1", n=10)
    await world.tick(600)
    assert world.targets() == [Target("stable:v1", 50), Target("cand:v2", 50)]
    world.served("cand:v2", n=3)
    await world.tick(600)
    assert world.targets() == [Target("cand:v2", 100)]
    world.served("cand:v2", n=3)
    await world.tick(600)
    assert world.routing.rollouts.rollouts[ROUTE].status == "completed"
    assert world.kinds() == ["rollout_step", "rollout_step", "rollout_step", "rollout_completed"]
    history = world.routing.get("assistant").history
    assert [c.who for c in history] == ["cli", "rollout", "rollout", "rollout", "rollout"]
    assert "completed" in history[-1].reason
    # A finished rollout does not hold the route any more.
    await world.routing.set("assistant", [Target("stable:v1", 1)], who="cli")


async def test_errors_on_the_candidate_abort_at_once_without_waiting_for_the_window(
    world: World,
) -> None:
    await world.routing.start_rollout("assistant", {**BODY, "max_error_rate": "20%"})
    world.served("cand:v2")
    world.failed("cand:v2")  # 1 of 2: 50% > 20%, with the 2 requests needed
    await world.routing.rollouts.settle()
    state = world.routing.rollouts.rollouts[ROUTE]
    assert state.status == "aborted"
    assert "error rate 50% > 20%" in state.reason
    assert world.targets() == [Target("stable:v1", 100)]
    assert world.routing.serving(world.routing.get("assistant")) == [Target("stable:v1", 100)]
    aborted = [e for e in world.seen if e["type"] == "rollout_aborted"]
    assert len(aborted) == 1 and "error rate" in aborted[0]["reason"]
    last = world.routing.get("assistant").history[-1]
    assert last.who == "rollout" and last.reason.startswith("rollout aborted: candidate cand:v2")


async def test_a_slow_candidate_is_rolled_back_at_the_window_end(world: World) -> None:
    await world.routing.start_rollout("assistant", {**BODY, "max_ttft_p95": "1.5x"})
    world.served("stable:v1", ttft_ms=100, n=10)
    world.served("cand:v2", ttft_ms=400, n=5)
    await world.tick(600)
    state = world.routing.rollouts.rollouts[ROUTE]
    assert state.status == "aborted", state
    assert "TTFT p95 400 ms > 1.5x the stable version's 100 ms" in state.reason
    assert world.targets() == [Target("stable:v1", 100)]


async def test_an_absolute_ttft_limit_and_the_decode_rate_and_poor_answers(
    world: World,
) -> None:
    await world.routing.start_rollout(
        "assistant", {**BODY, "max_ttft_p95": "300ms", "min_tokens_per_second": "0.5x"}
    )
    world.served("stable:v1", rate=100, n=5)
    world.served("cand:v2", rate=40, n=5)  # 0.4x the stable decode rate
    await world.tick(600)
    assert "decode 40.0 tok/s < 0.5x" in world.routing.rollouts.rollouts[ROUTE].reason


async def test_poor_answers_breach_when_asked(world: World) -> None:
    await world.routing.start_rollout("assistant", {**BODY, "max_poor_rate": "10%"})
    world.served("cand:v2", n=2)
    for _ in range(2):  # cut by the length limit: the quality signal
        world.events.publish(
            "request_finished", route=ROUTE, model="cand:v2", eval_count=8, done_reason="length"
        )
    world.served("stable:v1", n=4)
    await world.tick(600)
    reason = world.routing.rollouts.rollouts[ROUTE].reason
    assert "poor answers (empty or cut by the length limit) 50%, more than 10%" in reason


async def test_poor_answers_count_against_the_stable_versions_own(world: World) -> None:
    """Clients that cap max_tokens make both versions stop on the length limit: not a
    breach while the candidate is no worse than the stable version."""
    await world.routing.start_rollout("assistant", {**BODY, "max_poor_rate": "10%"})
    for version, count in (("cand:v2", 3), ("stable:v1", 6)):
        for _ in range(count):
            world.events.publish(
                "request_finished", route=ROUTE, model=version, eval_count=8, done_reason="length"
            )
    await world.tick(600)
    assert world.routing.rollouts.rollouts[ROUTE].step == 1


async def test_a_window_without_enough_candidate_traffic_waits(world: World) -> None:
    await world.routing.start_rollout("assistant", BODY)
    world.served("cand:v2")  # 1 of the 2 needed
    await world.tick(600)
    state = world.routing.rollouts.rollouts[ROUTE]
    assert state.status == "running" and state.step == 0
    assert "extended" in state.log[-1]["event"]
    world.served("cand:v2")
    await world.tick(600)
    assert state.step == 1


async def test_pause_holds_resume_restarts_the_window_abort_rolls_back(world: World) -> None:
    await world.routing.start_rollout("assistant", BODY)
    await world.routing.rollouts.pause(ROUTE)
    world.served("cand:v2", n=5)
    await world.tick(3600)
    state = world.routing.rollouts.rollouts[ROUTE]
    assert state.status == "paused" and state.step == 0
    with pytest.raises(ConflictError, match="paused, not running"):
        await world.routing.rollouts.pause(ROUTE)
    await world.routing.rollouts.resume(ROUTE)
    world.served("cand:v2", n=2)
    await world.tick(600)
    assert state.step == 1
    await world.routing.rollouts.abort(ROUTE, "seen enough")
    assert state.status == "aborted" and state.reason == "seen enough"
    assert world.targets() == [Target("stable:v1", 100)]
    with pytest.raises(NotFoundError, match="no rollout in progress"):
        await world.routing.rollouts.abort(ROUTE)


async def test_a_second_rollout_and_edits_during_one_are_conflicts(world: World) -> None:
    await world.routing.start_rollout("assistant", BODY)
    with pytest.raises(ConflictError, match="already has a rollout"):
        await world.routing.start_rollout("assistant", BODY)
    with pytest.raises(ConflictError, match="rollout in progress"):
        await world.routing.set("assistant", [Target("cand:v2", 1)], who="cli")
    with pytest.raises(ConflictError, match="rollout in progress"):
        await world.routing.rollback("assistant", to=None, who="cli")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"steps": "5,25"}, "missing field 'to'"),
        ({"to": "stable:v1"}, "already the route's stable version"),
        ({"to": "nope:v9"}, "'nope:v9' not found"),
        ({"to": "cand:v2", "steps": "50,25"}, "must increase"),
        ({"to": "cand:v2", "steps": "0,50"}, r"in \(0, 100\]"),
        ({"to": "cand:v2", "every": "soon"}, "every"),
        ({"to": "cand:v2", "max_error_rate": "200%"}, "between 0% and 100%"),
        ({"to": "cand:v2", "max_ttft_p95": "fast"}, "max_ttft_p95"),
    ],
)
async def test_bad_rollouts_are_refused_naming_the_field(
    world: World, body: dict[str, Any], message: str
) -> None:
    with pytest.raises((BadRequestError, NotFoundError, ConflictError), match=message):
        await world.routing.start_rollout("assistant", body)
    assert world.routing.rollouts.active(ROUTE) is None


async def test_a_restart_mid_rollout_resumes_at_its_step_with_a_fresh_window(
    models: Path,
) -> None:
    clock = FakeClock()
    first = World(models, clock)
    await first.routing.start()
    await first.routing.set("assistant", [Target("stable:v1", 1)], who="cli")
    await first.routing.start_rollout("assistant", BODY)
    first.served("cand:v2", n=2)
    await first.tick(600)
    assert first.targets() == [Target("stable:v1", 50), Target("cand:v2", 50)]
    first.served("cand:v2", n=2)  # figures the restart loses
    await first.routing.stop()  # the daemon goes away (its timers with it)

    second = World(models, clock)  # a new daemon on the same store
    await second.routing.start()
    state = second.routing.rollouts.rollouts[ROUTE]
    assert state.status == "running" and state.step == 1
    assert "resumed after a restart" in state.log[-1]["event"]
    assert second.targets() == [Target("stable:v1", 50), Target("cand:v2", 50)]
    await second.tick(600)  # no candidate traffic since the restart: it waits
    assert state.step == 1
    second.served("cand:v2", n=2)
    await second.tick(600)
    assert second.targets() == [Target("cand:v2", 100)]
    await second.routing.stop()


async def test_a_paused_rollout_stays_paused_over_a_restart(models: Path) -> None:
    clock = FakeClock()
    first = World(models, clock)
    await first.routing.start()
    await first.routing.set("assistant", [Target("stable:v1", 1)], who="cli")
    await first.routing.start_rollout("assistant", BODY)
    await first.routing.rollouts.pause(ROUTE)
    await first.routing.stop()
    second = World(models, clock)
    await second.routing.start()
    second.served("cand:v2", n=5)
    await second.tick(3600)
    state = second.routing.rollouts.rollouts[ROUTE]
    assert state.status == "paused" and state.step == 0
    await second.routing.stop()
