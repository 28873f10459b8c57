"""The routing service: what the API calls for routes, and what `Inference.resolve`
asks (`pick`) for every request of every dialect.

Updates without dropped requests (blue/green): a change is written to the table at once,
but requests keep going to the versions the route served before until every new version
with traffic is loaded ("warming"); then the route switches. Requests in flight on the
old version hold their scheduler lease and finish there; the old version unloads after
its keep-alive once idle. When the new version cannot load beside the old one (memory:
the scheduler queues its load behind the busy old one), waiting would never end under
steady load, so the route switches at once: new requests queue for the new version,
the old one drains, is evicted, and the new one loads; nothing fails, requests wait
about one load. A rollback or an aborted rollout back to a version still loaded
switches at once; so does a route with no earlier state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from localserve.errors import (
    BadRequestError,
    ConflictError,
    LocalserveError,
    ModelNotFoundError,
)
from localserve.names import ModelName
from localserve.routing.choose import choose
from localserve.routing.context import Pick
from localserve.routing.rollout import (
    RolloutController,
    RolloutState,
    ShadowStats,
    Thresholds,
    parse_duration,
    parse_fraction,
    parse_steps,
)
from localserve.routing.stats import Summary, VersionStats
from localserve.routing.table import Route, RouteTable, Target, check_targets
from localserve.scheduling.clock import Clock, LoopClock
from localserve.scheduling.scheduler import ModelSnapshot
from localserve.service.inference import Finished, Generation, GenerationRequest, Token
from localserve.store.store import Store, StoredModel
from localserve.telemetry.events import EventBus

log = logging.getLogger("localserve.routing.service")

WARMUP_TIMEOUT_S = 600.0  # a load longer than this: switch anyway
WARMUP_PROBE_S = 1.0  # a new version not even loading after this is waiting for memory
POLL_S = 0.05
RECENT_HISTORY = 10  # changes a route's description carries (all: GET .../history)

Loader = Callable[[str], Any]  # awaitable: load a version (Inference.load)
Starter = Callable[[GenerationRequest], Awaitable[Generation]]  # Inference.start
SHADOW_KEEP = 1000  # comparisons kept per route
Snapshot = Callable[[], list[ModelSnapshot]]


@dataclass
class _Tally:
    """What one stream said, as a shadow comparison needs it."""

    started: float = field(default_factory=time.perf_counter)
    first: float | None = None  # when its first token came
    parts: list[str] = field(default_factory=list)
    finished: Finished | None = None

    def see(self, event: Any) -> None:
        if isinstance(event, Token):
            self.first = self.first or time.perf_counter()
            self.parts.append(event.text)
        elif isinstance(event, Finished):
            self.finished = event

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def tokens(self) -> int:
        return self.finished.eval_count if self.finished is not None else 0

    @property
    def ttft_s(self) -> float | None:
        return None if self.first is None else self.first - self.started


@dataclass(frozen=True)
class Removal:
    """What deleting a model with force did to one route."""

    route: str
    targets: list[Target]  # what it points at now (empty: the route was removed)


class Routing:
    def __init__(
        self,
        store: Store,
        events: EventBus,
        *,
        load: Loader,
        snapshot: Snapshot,
        start: Starter | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.events = events
        self.clock = clock or LoopClock()
        self.table = RouteTable(store.root, clock=self.clock.time)
        self.stats = VersionStats(self.clock.time)
        events.add_listener(self.stats.listener)
        self.rollouts = RolloutController(self, self.stats, events, self.clock)
        self.rng = rng or random.Random()
        self._load = load
        self._snapshot = snapshot
        self._start = start
        self._shadow_tasks: dict[str, asyncio.Task[None]] = {}  # one at a time per route
        self._serving: dict[str, list[Target]] = {}  # route -> what requests go to now
        self._warming: dict[str, asyncio.Task[None]] = {}
        self._edit_lock = asyncio.Lock()

    async def start(self) -> None:
        """Read the table (a daemon restart) and take up its rollouts."""
        data = await asyncio.to_thread(self.table.reload)
        self.rollouts.restore(data.rollouts)

    async def stop(self) -> None:
        self.rollouts.close()
        tasks = [*self._warming.values(), *self._shadow_tasks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ---- resolution (every request) --------------------------------------------------

    def pick(self, raw_name: str, session: str | None) -> Pick | None:
        try:
            route = self.table.find(raw_name)
        except LocalserveError:
            return None  # not a valid name: the model lookup says why
        if route is None:
            return None
        targets = self._serving.get(route.name) or route.targets
        return Pick(route.name, choose(targets, session, self.rng))

    def shares_of(self, version: str) -> dict[str, float]:
        """The routes serving `version` now, with its share of each (for /api/ps)."""
        shares = {}
        for route in self.table.all():
            serving = self.serving(route)
            total = sum(t.weight for t in serving) or 1.0
            for target in serving:
                if target.model == version and target.weight > 0:
                    shares[route.name] = target.weight / total
        return shares

    def primary_name(self, raw_name: str) -> str:
        """A route's largest-weight version; any other name as it is."""
        try:
            route = self.table.find(raw_name)
        except LocalserveError:
            return raw_name
        if route is None:
            return raw_name
        return max(route.targets, key=lambda t: t.weight).model

    def serving(self, route: Route) -> list[Target]:
        return self._serving.get(route.name) or route.targets

    def warming(self, route: Route) -> bool:
        task = self._warming.get(route.name)
        return task is not None and not task.done()

    # ---- reads -----------------------------------------------------------------------

    def get(self, raw_name: str) -> Route:
        return self.table.get(raw_name)

    def all(self) -> list[Route]:
        return self.table.all()

    def describe(self, route: Route) -> dict[str, Any]:
        """A route as the API shows it: targets and shares, what it serves now, the
        live figures of each version, and its rollout."""
        figures: dict[str, Summary] = {}
        versions = {t.model for t in route.targets} | set(self.stats.versions(route.name))
        for version in sorted(versions):
            figures[version] = self.stats.window(route.name, version, self.clock.time() - 300)
        rollout = self.rollouts.rollouts.get(route.name)
        return {
            "name": route.name,
            "targets": [{**t.to_json(), "share": route.shares()[t.model]} for t in route.targets],
            "serving": [t.to_json() for t in self.serving(route)],
            "warming": self.warming(route),
            "revision": route.revision,
            "updated_at": route.history[-1].time if route.history else None,
            "versions": {v: s.to_json() for v, s in figures.items()},
            "rollout": self.rollouts.describe(rollout) if rollout is not None else None,
            "history": [c.to_json() for c in route.history[-RECENT_HISTORY:]],  # the latest
        }

    async def primary_models(self) -> list[tuple[Route, StoredModel | None]]:
        """Each route with its largest-weight version's stored model (for listings)."""

        def lookup() -> list[tuple[Route, StoredModel | None]]:
            found: list[tuple[Route, StoredModel | None]] = []
            for route in self.table.all():
                primary = max(route.targets, key=lambda t: t.weight).model
                stored = None
                with contextlib.suppress(LocalserveError):
                    stored = self.store.get(ModelName.parse(primary))
                found.append((route, stored))
            return found

        return await asyncio.to_thread(lookup)

    # ---- changes ---------------------------------------------------------------------

    async def _check_targets(self, name: str, targets: list[Target]) -> list[Target]:
        """Targets named as the store spells them; 404 naming a missing model, 400 for a
        route to a route (no chains, so no cycles) or to itself."""
        check_targets(name, targets)

        def lookup() -> list[Target]:
            checked = []
            for target in targets:
                if self.table.find(target.model) is not None:
                    raise BadRequestError(
                        f"targets: {target.model} is a route; a route points at installed "
                        "models, not at other routes (no chains, no cycles)"
                    )
                stored = self.store.get(ModelName.parse(target.model))  # 404 naming it
                checked.append(Target(stored.name.display(), target.weight))
            return checked

        return await asyncio.to_thread(lookup)

    async def _check_name(self, raw_name: str) -> str:
        name = ModelName.parse(raw_name)
        if "/" in name.display():
            raise BadRequestError(
                f"route name '{raw_name}': a route's name is one word with an optional "
                "tag (e.g. assistant or assistant:prod), without a host or namespace"
            )

        def installed() -> bool:
            try:
                self.store.get(name)
            except ModelNotFoundError:
                return False
            return True

        if await asyncio.to_thread(installed):
            raise ConflictError(
                f"'{name.display()}' is an installed model: a route needs a name of its own"
            )
        return name.display()

    async def set(
        self,
        raw_name: str,
        targets: list[Target],
        *,
        who: str,
        reason: str = "",
        expected_revision: int | None = None,
    ) -> Route:
        name = await self._check_name(raw_name)
        checked = await self._check_targets(name, targets)
        existing = self.table.find(name)
        if existing is not None and self.rollouts.active(existing.name) is not None:
            raise ConflictError(
                f"route '{existing.name}' has a rollout in progress: abort it first "
                f"(localserve rollout abort {existing.name})"
            )
        return await self._write(
            name, checked, who=who, reason=reason, expected_revision=expected_revision
        )

    async def rollback(self, raw_name: str, *, to: int | None, who: str, reason: str = "") -> Route:
        route = self.table.get(raw_name)
        if self.rollouts.active(route.name) is not None:
            raise ConflictError(
                f"route '{route.name}' has a rollout in progress: `rollout abort` rolls it back"
            )
        targets, why = self.table.rollback_targets(route.name, to)
        checked = await self._check_targets(route.name, targets)
        return await self._write(
            route.name,
            checked,
            who=who,
            reason=f"{why}: {reason}" if reason else why,
            expected_revision=None,
        )

    async def delete(
        self, raw_name: str, *, expected_revision: int | None = None, who: str = "api"
    ) -> Route:
        route = self.table.get(raw_name)
        if self.rollouts.active(route.name) is not None:
            raise ConflictError(f"route '{route.name}' has a rollout in progress: abort it first")
        removed = await asyncio.to_thread(
            self.table.delete, route.name, expected_revision=expected_revision
        )
        self._serving.pop(removed.name, None)
        task = self._warming.pop(removed.name, None)
        if task is not None:
            task.cancel()
        self.events.publish(
            "route_changed",
            route=removed.name,
            revision=removed.revision,
            old=[t.to_json() for t in removed.targets],
            new=[],
            who=who,
            reason="deleted",
        )
        return removed

    async def release_model(self, raw_model: str, *, force: bool) -> list[Removal]:
        """Before a model is deleted: 409 naming the routes that use it; with `force`,
        the model leaves those routes (a route left with nothing is removed) and any
        rollout through it is aborted."""
        using = self.table.using(raw_model)
        if not using:
            return []
        if not force:
            names = ", ".join(
                f"{r.name} ({r.shares()[t.model]:.0%})"
                for r in using
                for t in r.targets
                if ModelName.parse(t.model).key() == ModelName.parse(raw_model).key()
            )
            raise ConflictError(
                f"model '{raw_model}' is used by route(s) {names}: re-point them first, "
                "or delete with force (it then leaves those routes)"
            )
        gone = ModelName.parse(raw_model).key()
        removals = []
        for route in using:
            if self.rollouts.active(route.name) is not None:
                await self.rollouts.abort(route.name, f"model {raw_model} deleted")
                route = self.table.get(route.name)
            rest = [t for t in route.targets if ModelName.parse(t.model).key() != gone]
            if rest and sum(t.weight for t in rest) > 0:
                await self._write(
                    route.name, rest, who="api", reason=f"model {raw_model} deleted (force)"
                )
                removals.append(Removal(route.name, rest))
            else:
                await self.delete(route.name)
                removals.append(Removal(route.name, []))
        return removals

    # ---- rollouts --------------------------------------------------------------------

    async def start_rollout(self, raw_name: str, body: dict[str, Any]) -> RolloutState:
        route = self.table.get(raw_name)
        to = body.get("to")
        if not isinstance(to, str) or not to:
            raise BadRequestError("missing field 'to': the candidate model")
        steps = parse_steps(body.get("steps"))
        every_s = parse_duration(body.get("every", 600), "every")
        thresholds = Thresholds.from_body(body)
        shadow = parse_fraction(body["shadow"], "shadow") if body.get("shadow") else 0.0
        if shadow and self._start is None:
            raise BadRequestError("shadow: shadow traffic is not available here")
        candidate = (await self._check_targets(route.name, [Target(to, 1.0)]))[0].model
        return await self.rollouts.start(route, candidate, steps, every_s, thresholds, shadow)

    # ---- shadow traffic --------------------------------------------------------------

    def shadowed(self, generation: Any, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """`events` as is, or tapped so that, once the stable version's answer is done,
        a copy of the request runs on the candidate in the background and the two are
        compared (localserve.routing.rollout.ShadowStats). At most one shadow runs per
        route: a due shadow while one runs is skipped, so shadows never pile up."""
        model = generation.model
        state = self.rollouts.active(model.route) if model.route else None
        if (
            state is None
            or state.status != "running"
            or not state.shadow
            or model.name != state.stable
            or self._start is None
            or self.rng.random() >= state.shadow
        ):
            return events
        stats = self.rollouts.shadows.setdefault(state.route, ShadowStats())
        running = self._shadow_tasks.get(state.route)
        if running is not None and not running.done():
            stats.skipped += 1
            return events
        return self._tap(generation.request, events, state, stats)

    async def _tap(
        self,
        request: GenerationRequest,
        events: AsyncIterator[Any],
        state: RolloutState,
        stats: ShadowStats,
    ) -> AsyncIterator[Any]:
        served = _Tally()
        try:
            async for event in events:
                served.see(event)
                yield event
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
        if served.finished is None:
            return
        self._shadow_tasks[state.route] = asyncio.get_running_loop().create_task(
            self._shadow(request, state.candidate, served, stats),
            name=f"shadow {state.route}",
        )

    async def _shadow(
        self, request: GenerationRequest, candidate: str, served: _Tally, stats: ShadowStats
    ) -> None:
        assert self._start is not None
        copy = dataclasses.replace(request, model=candidate, endpoint="shadow", session=None)
        shadow = _Tally()
        try:
            generation = await self._start(copy)
            events = generation.events()
            try:
                async for event in events:
                    shadow.see(event)
            finally:
                await events.aclose()  # type: ignore[attr-defined]
        except LocalserveError as exc:
            stats.requests += 1
            stats.errors += 1
            log.info("shadow request to %s failed: %s", candidate, exc)
            return
        stats.requests += 1
        if served.tokens:
            ratio = shadow.tokens / served.tokens
            stats.length_ratios = [*stats.length_ratios, ratio][-SHADOW_KEEP:]
        if served.ttft_s and shadow.ttft_s is not None:
            ratio = shadow.ttft_s / served.ttft_s
            stats.ttft_ratios = [*stats.ttft_ratios, ratio][-SHADOW_KEEP:]
        if request.options.get("temperature") == 0:
            stats.greedy += 1
            stats.agreed += int(shadow.text == served.text)

    # ---- the writer the controller uses ----------------------------------------------

    async def write(
        self,
        name: str,
        targets: list[Target],
        *,
        who: str,
        reason: str,
        rollout: RolloutState,
        immediate: bool,
    ) -> Route:
        return await self._write(
            name,
            targets,
            who=who,
            reason=reason,
            rollout=rollout.to_json(),
            immediate=immediate,
        )

    async def save_rollout(self, state: RolloutState) -> None:
        await asyncio.to_thread(self.table.save_rollout, state.route, state.to_json())

    async def _write(
        self,
        name: str,
        targets: list[Target],
        *,
        who: str,
        reason: str,
        expected_revision: int | None = None,
        rollout: dict[str, Any] | None = None,
        immediate: bool = False,
    ) -> Route:
        async with self._edit_lock:
            before = self.table.find(name)
            previous = self.serving(before) if before is not None else None
            route = await asyncio.to_thread(
                self.table.set,
                name,
                targets,
                who=who,
                reason=reason,
                expected_revision=expected_revision,
                rollout=rollout,
            )
            change = route.history[-1]
            self.events.publish(
                "route_changed",
                route=route.name,
                revision=route.revision,
                old=[t.to_json() for t in change.old],
                new=[t.to_json() for t in change.new],
                who=who,
                reason=reason,
            )
            self._cut_over(route, previous, immediate=immediate)
            return route

    # ---- blue/green ------------------------------------------------------------------

    def _loaded(self) -> dict[str, str]:
        return {row["model"]: row["state"] for row in self._snapshot()}

    def _cut_over(self, route: Route, previous: list[Target] | None, *, immediate: bool) -> None:
        """Serve `route.targets` now, or keep serving `previous` until they are loaded."""
        old = self._warming.pop(route.name, None)
        if old is not None:
            old.cancel()
        loaded = self._loaded()
        cold = [t.model for t in route.targets if t.weight > 0 and loaded.get(t.model) != "ready"]
        if immediate or previous is None or not cold:
            self._serving[route.name] = list(route.targets)
            return
        self._serving[route.name] = list(previous)
        self._warming[route.name] = asyncio.get_running_loop().create_task(
            self._warm(route, cold), name=f"warm route {route.name}"
        )

    async def _warm(self, route: Route, versions: list[str]) -> None:
        """Load the new versions (each waits for its load), then switch the route."""
        try:
            loads = [asyncio.ensure_future(self._load(v)) for v in versions]
            for task in loads:  # a load that outlives the wait still gets its error read
                task.add_done_callback(_consume)
            started = self.clock.monotonic()
            while not all(task.done() for task in loads):
                waited = self.clock.monotonic() - started
                if waited > WARMUP_TIMEOUT_S:
                    log.warning("route %s: new versions still loading; switching", route.name)
                    break
                if waited > WARMUP_PROBE_S:
                    rows = self._loaded()
                    if any(
                        not task.done() and version not in rows
                        for version, task in zip(versions, loads, strict=True)
                    ):
                        # Queued behind a busy model for memory: switch, so it drains.
                        log.info(
                            "route %s: the new version waits for memory; switching now",
                            route.name,
                        )
                        break
                await asyncio.sleep(POLL_S)
            for task in loads:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.warning(
                        "route %s: loading a new version failed: %s",
                        route.name,
                        task.exception(),
                    )
        finally:
            current = self.table.find(route.name)
            if current is not None and current.revision == route.revision:
                self._serving[route.name] = list(current.targets)
            if self._warming.get(route.name) is asyncio.current_task():
                self._warming.pop(route.name, None)


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
