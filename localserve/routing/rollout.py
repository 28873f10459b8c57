"""Canary rollouts that roll themselves back.

A rollout moves a route from its stable version (the target with the largest weight when
it starts) to a candidate in steps (percentages of the traffic, e.g. 5, 25, 50, 100).
Each step lasts `every_s`; at its end the candidate's figures over the step's window are
compared with the stable version's over the same window (localserve.routing.stats):

    error rate            candidate > max_error_rate                      (default 2%)
    TTFT p95              candidate > max_ttft_ratio x stable's p95       (default 1.5x,
                          and at least 50 ms more than the stable's)
                          or > max_ttft_s (an absolute limit, when given)
    decode tokens/s       candidate < min_rate_ratio x stable's           (off by default)
    poor answers          candidate's share of empty or length-cut answers
                          > the stable's share + max_poor_rate            (off by default;
                          relative, as clients that cap max_tokens make both cut often)

Any breach aborts: all traffic goes back to the stable version at once (it is still
loaded: it served the other share), the reason is recorded in the route's history and
the rollout's state, and `rollout_aborted` is published. A step in which the candidate
served fewer than `min_requests` requests is not judged: it waits another window (so a
quiet route never advances on no evidence). Errors are also checked as they happen:
once the candidate has `min_requests` requests in the window and its error rate is over
the limit, it aborts without waiting for the window's end. After the last step (100%)
passes, the route points at the candidate alone and `rollout_completed` is published.

Shadow traffic (`shadow`, e.g. 10%): while a rollout runs, that share of the requests
the stable version serves is copied to the candidate after the served answer is done;
the copy's answer is discarded after it is compared (`ShadowStats`: agreement with the
served text for greedy requests, token-count ratio, TTFT ratio). One shadow runs per
route at a time (a due one is skipped while another runs), and it starts only once the
served answer is complete, so it never delays the request it copies; on a machine with
one CPU it still shares the cores. The comparison is shown, not judged.

Every step is a route change (history entry, who "rollout") written together with the
rollout's state in the route table, so a rollout survives a daemon restart: a running
rollout resumes at its current step with a fresh window (the figures are in memory and
start again from zero), a paused one stays paused. `pause` holds the weights where they
are; `resume` starts the step's window again; `abort` is the manual rollback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from localserve.errors import BadRequestError, ConflictError, NotFoundError
from localserve.routing.stats import Sample, Summary, VersionStats
from localserve.routing.table import Route, Target
from localserve.scheduling.clock import Clock, Timer
from localserve.telemetry.events import EventBus

log = logging.getLogger("localserve.routing.rollout")

ACTIVE = ("running", "paused")
DEFAULT_STEPS = (5.0, 25.0, 50.0, 100.0)
DEFAULT_EVERY_S = 600.0
# A ratio breach of TTFT also needs this much more time in absolute terms: 6 ms against
# 4 ms is noise, not a slow version.
TTFT_SLACK_S = 0.05
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


# ---- parsing what the API and the CLI send --------------------------------------------------


def parse_duration(raw: Any, field_name: str) -> float:
    """Seconds from a number or "500ms", "30s", "10m", "1h"."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        seconds = float(raw)
    elif isinstance(raw, str) and (match := DURATION.match(raw)):
        seconds = float(match.group(1)) * UNITS[match.group(2)]
    else:
        raise BadRequestError(f"{field_name}: expected seconds or a duration like 10m, not {raw!r}")
    if seconds <= 0:
        raise BadRequestError(f"{field_name}: must be more than zero")
    return seconds


def parse_fraction(raw: Any, field_name: str) -> float:
    """A share from "2%" or a number in 0..1."""
    if isinstance(raw, str) and raw.strip().endswith("%"):
        try:
            value = float(raw.strip()[:-1]) / 100
        except ValueError:
            raise BadRequestError(f"{field_name}: not a percentage: {raw!r}") from None
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    else:
        raise BadRequestError(f"{field_name}: expected a percentage like 2% or 0.02, not {raw!r}")
    if not 0 <= value <= 1:
        raise BadRequestError(f"{field_name}: must be between 0% and 100%")
    return value


def parse_ratio_or_seconds(raw: Any, field_name: str) -> tuple[float | None, float | None]:
    """(ratio, seconds) from "1.5x" (relative to the stable version) or "800ms"/"2s"."""
    if isinstance(raw, str) and raw.strip().lower().endswith("x"):
        try:
            ratio = float(raw.strip()[:-1])
        except ValueError:
            raise BadRequestError(f"{field_name}: not a ratio: {raw!r}") from None
        if ratio <= 0:
            raise BadRequestError(f"{field_name}: the ratio must be more than zero")
        return ratio, None
    return None, parse_duration(raw, field_name)


def parse_ratio(raw: Any, field_name: str) -> float:
    if isinstance(raw, str) and raw.strip().lower().endswith("x"):
        raw = raw.strip()[:-1]
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise BadRequestError(f"{field_name}: expected a ratio like 0.8x, not {raw!r}") from None
    if value <= 0:
        raise BadRequestError(f"{field_name}: the ratio must be more than zero")
    return value


def parse_steps(raw: Any) -> list[float]:
    """Increasing percentages in (0, 100] that end at 100: [5, 25, 50, 100] or "5,25,50"."""
    if raw is None:
        return list(DEFAULT_STEPS)
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise BadRequestError("steps: expected a list of percentages like 5,25,50,100")
    steps: list[float] = []
    for item in items:
        try:
            value = float(str(item).strip().rstrip("%"))
        except ValueError:
            raise BadRequestError(f"steps: not a percentage: {item!r}") from None
        if not 0 < value <= 100:
            raise BadRequestError(f"steps: each step must be in (0, 100], not {value:g}")
        if steps and value <= steps[-1]:
            raise BadRequestError("steps: the percentages must increase")
        steps.append(value)
    if steps[-1] != 100:
        steps.append(100.0)
    return steps


@dataclass(frozen=True)
class Thresholds:
    max_error_rate: float = 0.02
    max_ttft_ratio: float | None = 1.5
    max_ttft_s: float | None = None
    min_rate_ratio: float | None = None
    max_poor_rate: float | None = None
    min_requests: int = 3

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Thresholds:
        values: dict[str, Any] = {}
        if body.get("max_error_rate") is not None:
            values["max_error_rate"] = parse_fraction(body["max_error_rate"], "max_error_rate")
        if body.get("max_ttft_p95") is not None:
            ratio, seconds = parse_ratio_or_seconds(body["max_ttft_p95"], "max_ttft_p95")
            values["max_ttft_ratio"], values["max_ttft_s"] = ratio, seconds
        if body.get("min_tokens_per_second") is not None:
            values["min_rate_ratio"] = parse_ratio(
                body["min_tokens_per_second"], "min_tokens_per_second"
            )
        if body.get("max_poor_rate") is not None:
            values["max_poor_rate"] = parse_fraction(body["max_poor_rate"], "max_poor_rate")
        if body.get("min_requests") is not None:
            count = body["min_requests"]
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise BadRequestError("min_requests: must be a positive integer")
            values["min_requests"] = count
        return cls(**values)

    def breach(self, candidate: Summary, stable: Summary) -> str | None:
        """Why the candidate fails this window (None when it passes)."""
        if candidate.error_rate > self.max_error_rate:
            return (
                f"error rate {candidate.error_rate:.0%} > {self.max_error_rate:.0%} "
                f"({candidate.errors} of {candidate.requests} requests)"
            )
        cand_ttft, stable_ttft = candidate.ttft_p95_s, stable.ttft_p95_s
        if cand_ttft is not None and self.max_ttft_s is not None and cand_ttft > self.max_ttft_s:
            return f"TTFT p95 {cand_ttft * 1000:.0f} ms > {self.max_ttft_s * 1000:.0f} ms"
        if (
            cand_ttft is not None
            and stable_ttft
            and self.max_ttft_ratio is not None
            and cand_ttft > self.max_ttft_ratio * stable_ttft
            and cand_ttft - stable_ttft > TTFT_SLACK_S
        ):
            return (
                f"TTFT p95 {cand_ttft * 1000:.0f} ms > {self.max_ttft_ratio:g}x the stable "
                f"version's {stable_ttft * 1000:.0f} ms"
            )
        cand_rate, stable_rate = candidate.tokens_per_second, stable.tokens_per_second
        if (
            self.min_rate_ratio is not None
            and cand_rate is not None
            and stable_rate
            and cand_rate < self.min_rate_ratio * stable_rate
        ):
            return (
                f"decode {cand_rate:.1f} tok/s < {self.min_rate_ratio:g}x the stable "
                f"version's {stable_rate:.1f} tok/s"
            )
        if (
            self.max_poor_rate is not None
            and candidate.poor_rate > stable.poor_rate + self.max_poor_rate
        ):
            return (
                f"poor answers (empty or cut by the length limit) {candidate.poor_rate:.0%}, "
                f"more than {self.max_poor_rate:.0%} over the stable version's "
                f"{stable.poor_rate:.0%}"
            )
        return None


@dataclass
class ShadowStats:
    """How the candidate's shadow answers compared with the stable version's (the
    answers themselves are discarded). Agreement counts greedy requests only
    (temperature 0: the same prompt should give the same text)."""

    requests: int = 0
    errors: int = 0
    greedy: int = 0
    agreed: int = 0
    skipped: int = 0  # a shadow was due but the previous one still ran
    length_ratios: list[float] = field(default_factory=list)  # candidate / stable tokens
    ttft_ratios: list[float] = field(default_factory=list)  # candidate / stable TTFT

    def to_json(self) -> dict[str, Any]:
        def mean(values: list[float]) -> float | None:
            return sum(values) / len(values) if values else None

        return {
            "requests": self.requests,
            "errors": self.errors,
            "skipped": self.skipped,
            "greedy": self.greedy,
            "agreement_rate": self.agreed / self.greedy if self.greedy else None,
            "length_ratio": mean(self.length_ratios),
            "ttft_ratio": mean(self.ttft_ratios),
        }


@dataclass
class RolloutState:
    route: str
    stable: str
    candidate: str
    steps: list[float]
    every_s: float
    thresholds: Thresholds
    started_at: float
    step_started_at: float
    step: int = 0  # index into steps
    window_ends_at: float = 0.0  # when the running window is judged
    shadow: float = 0.0  # the share of the stable version's requests copied to the candidate
    status: str = "running"  # running | paused | aborted | completed
    reason: str = ""
    log: list[dict[str, Any]] = field(default_factory=list)  # what happened, in order

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def percent(self) -> float:
        return self.steps[self.step]

    def targets(self) -> list[Target]:
        """Stable first, candidate last (see localserve.routing.choose)."""
        share = self.percent
        if share >= 100:
            return [Target(self.candidate, 100.0)]
        return [Target(self.stable, 100.0 - share), Target(self.candidate, share)]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["thresholds"] = asdict(self.thresholds)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutState:
        values = dict(data)
        values["thresholds"] = Thresholds(**values.get("thresholds", {}))
        values["steps"] = [float(s) for s in values["steps"]]
        return cls(**values)


class RouteWriter(Protocol):
    """The routing service, as the controller changes a route through it."""

    async def write(
        self,
        name: str,
        targets: list[Target],
        *,
        who: str,
        reason: str,
        rollout: RolloutState,
        immediate: bool,
    ) -> Route: ...

    async def save_rollout(self, state: RolloutState) -> None: ...


class RolloutController:
    """Runs the rollouts: one timer per running rollout, judged at each window's end."""

    def __init__(self, writer: RouteWriter, stats: VersionStats, events: EventBus, clock: Clock):
        self.writer = writer
        self.stats = stats
        self.events = events
        self.clock = clock
        self.rollouts: dict[str, RolloutState] = {}  # by route name, the last of each
        self.shadows: dict[str, ShadowStats] = {}  # the shadow comparisons, in memory
        self._timers: dict[str, Timer] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = asyncio.Lock()
        stats.observers.append(self._on_sample)

    # ---- lifecycle -----------------------------------------------------------------------

    def restore(self, saved: dict[str, dict[str, Any]]) -> None:
        """Take the rollouts the table kept over a restart: a running one resumes at its
        step with a fresh window; a paused one stays paused."""
        now = self.clock.time()
        for name, data in saved.items():
            try:
                state = RolloutState.from_json(data)
            except (TypeError, KeyError, ValueError):
                log.warning("ignoring the unreadable saved rollout of %s", name)
                continue
            self.rollouts[name] = state
            self.shadows[name] = ShadowStats()
            if state.status == "running":
                state.step_started_at = now
                state.log.append({"time": now, "event": "resumed after a restart"})
                self._arm(state)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()

    async def settle(self) -> None:
        """Wait for the work timers started (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def active(self, route: str) -> RolloutState | None:
        state = self.rollouts.get(route)
        return state if state is not None and state.active else None

    # ---- commands ------------------------------------------------------------------------

    async def start(
        self,
        route: Route,
        candidate: str,
        steps: list[float],
        every_s: float,
        thresholds: Thresholds,
        shadow: float = 0.0,
    ) -> RolloutState:
        async with self._lock:
            if self.active(route.name) is not None:
                raise ConflictError(f"route '{route.name}' already has a rollout in progress")
            stable = max(route.targets, key=lambda t: t.weight).model
            if stable == candidate:
                raise BadRequestError(f"to: {candidate} is already the route's stable version")
            now = self.clock.time()
            state = RolloutState(
                route=route.name,
                stable=stable,
                candidate=candidate,
                steps=steps,
                every_s=every_s,
                thresholds=thresholds,
                started_at=now,
                step_started_at=now,
                shadow=shadow,
            )
            self.shadows[route.name] = ShadowStats()
            state.log.append({"time": now, "event": f"started: step 1 at {steps[0]:g}%"})
            await self.writer.write(
                route.name,
                state.targets(),
                who="rollout",
                reason=f"rollout to {candidate}: step 1/{len(steps)} {steps[0]:g}%",
                rollout=state,
                immediate=False,
            )
            self.rollouts[route.name] = state
            self.events.publish("rollout_step", **self._event_fields(state))
            self._arm(state)
            return state

    async def pause(self, name: str) -> RolloutState:
        async with self._lock:
            state = self._require(name, "running")
            state.status = "paused"
            state.log.append({"time": self.clock.time(), "event": "paused"})
            self._disarm(name)
            await self.writer.save_rollout(state)
            self.events.publish("rollout_paused", **self._event_fields(state))
            return state

    async def resume(self, name: str) -> RolloutState:
        async with self._lock:
            state = self._require(name, "paused")
            state.status = "running"
            state.step_started_at = self.clock.time()
            state.log.append({"time": state.step_started_at, "event": "resumed"})
            await self.writer.save_rollout(state)
            self._arm(state)
            self.events.publish("rollout_resumed", **self._event_fields(state))
            return state

    async def abort(self, name: str, reason: str = "aborted by hand") -> RolloutState:
        async with self._lock:
            state = self.active(name)
            if state is None:
                raise self._no_rollout(name)
            await self._abort(state, reason)
            return state

    # ---- judging -------------------------------------------------------------------------

    def _arm(self, state: RolloutState) -> None:
        self._disarm(state.route)
        state.window_ends_at = self.clock.time() + state.every_s
        self._timers[state.route] = self.clock.call_later(
            state.every_s, self._spawn_tick, state.route
        )

    def _disarm(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn_tick(self, name: str) -> None:
        self._spawn(self.tick(name))

    def windows(self, state: RolloutState) -> tuple[Summary, Summary]:
        since = state.step_started_at
        return (
            self.stats.window(state.route, state.candidate, since),
            self.stats.window(state.route, state.stable, since),
        )

    async def tick(self, name: str) -> None:
        """The end of a step's window: abort, wait another window, advance or finish."""
        async with self._lock:
            state = self.rollouts.get(name)
            if state is None or state.status != "running":
                return
            self._timers.pop(name, None)
            candidate, stable = self.windows(state)
            why = state.thresholds.breach(candidate, stable)
            if why is not None and candidate.requests:
                await self._abort(state, f"candidate {state.candidate}: {why}")
                return
            now = self.clock.time()
            if candidate.requests < state.thresholds.min_requests:
                state.log.append(
                    {
                        "time": now,
                        "event": f"step {state.step + 1} extended: the candidate served "
                        f"{candidate.requests} of the {state.thresholds.min_requests} "
                        "requests needed to judge it",
                    }
                )
                await self.writer.save_rollout(state)
                self._arm(state)
                return
            if state.step + 1 >= len(state.steps):
                await self._commit(
                    state,
                    f"rollout to {state.candidate} completed",
                    {"time": now, "event": "completed"},
                    status="completed",
                )
                self.events.publish("rollout_completed", **self._event_fields(state))
                return
            step = state.step + 1
            await self._commit(
                state,
                f"rollout to {state.candidate}: step {step + 1}/{len(state.steps)} "
                f"{state.steps[step]:g}%",
                {"time": now, "event": f"step {step + 1} at {state.steps[step]:g}%"},
                step=step,
                step_started_at=now,
            )
            self.events.publish("rollout_step", **self._event_fields(state))
            self._arm(state)

    def _on_sample(self, route: str, version: str, sample: Sample) -> None:
        """An error on the candidate: abort now when the window's error rate is over."""
        state = self.rollouts.get(route)
        if state is None or state.status != "running" or version != state.candidate:
            return
        if sample.ok:
            return
        candidate, _ = self.windows(state)
        limits = state.thresholds
        if candidate.requests >= limits.min_requests and (
            candidate.error_rate > limits.max_error_rate
        ):
            self._spawn(self._abort_if_running(route, state))

    async def _abort_if_running(self, name: str, state: RolloutState) -> None:
        async with self._lock:
            if self.rollouts.get(name) is state and state.status == "running":
                candidate, _ = self.windows(state)
                why = (
                    f"error rate {candidate.error_rate:.0%} > "
                    f"{state.thresholds.max_error_rate:.0%} "
                    f"({candidate.errors} of {candidate.requests} requests)"
                )
                await self._abort(state, f"candidate {state.candidate}: {why}")

    async def _abort(self, state: RolloutState, reason: str) -> None:
        self._disarm(state.route)
        await self._commit(
            state,
            f"rollout aborted: {reason}",
            {"time": self.clock.time(), "event": f"aborted: {reason}"},
            status="aborted",
            reason=reason,
        )
        log.warning("rollout of %s aborted: %s", state.route, reason)
        self.events.publish("rollout_aborted", **self._event_fields(state))

    async def _commit(
        self, state: RolloutState, why: str, entry: dict[str, Any], **changes: Any
    ) -> None:
        """Write the route change and the rollout's next state together; only then does
        `state` (what status readers see) take the changes, so a reader never sees a
        state the route table does not have yet, and a failed write changes nothing."""
        new = dataclasses.replace(state, **changes)
        new.log = [*state.log, entry]
        aborted = new.status == "aborted"
        await self.writer.write(
            state.route,
            [Target(new.stable, 100.0)] if aborted else new.targets(),
            who="rollout",
            reason=why,
            rollout=new,
            immediate=aborted,  # the stable version is loaded: switch at once
        )
        vars(state).update(vars(new))

    # ---- helpers -------------------------------------------------------------------------

    def _require(self, name: str, status: str) -> RolloutState:
        state = self.rollouts.get(name)
        if state is None or not state.active:
            raise self._no_rollout(name)
        if state.status != status:
            raise ConflictError(f"the rollout of '{name}' is {state.status}, not {status}")
        return state

    @staticmethod
    def _no_rollout(name: str) -> NotFoundError:
        return NotFoundError(f"route '{name}' has no rollout in progress")

    def _event_fields(self, state: RolloutState) -> dict[str, Any]:
        return {
            "route": state.route,
            "stable": state.stable,
            "candidate": state.candidate,
            "step": state.step + 1,
            "steps": len(state.steps),
            "percent": state.percent,
            "status": state.status,
            "reason": state.reason,
        }

    def describe(self, state: RolloutState) -> dict[str, Any]:
        """The status API's answer: the state, and both versions' figures this window."""
        candidate, stable = self.windows(state)
        now = self.clock.time()
        next_in = max(0.0, state.window_ends_at - now) if state.status == "running" else None
        shadow = self.shadows.get(state.route)
        return {
            **state.to_json(),
            "percent": state.percent,
            "next_step_in_s": next_in,
            "window": {"candidate": candidate.to_json(), "stable": stable.to_json()},
            "shadow_results": shadow.to_json() if shadow is not None else None,
        }
