"""What a router in front of several nodes needs from each one: liveness, readiness and
a drain for rolling upgrades (issue 15; the router is the LiteLLM proxy, see
localserve.fleet and packaging/fleet/).

    GET  /health      liveness: 200 {"status": "ok", "state": ...} while the process serves
                      HTTP at all (also while draining); cheap, touches nothing else.
    GET  /ready       readiness: 200 with the per-model queue depth and in-flight counts;
                      503 + Retry-After while the node drains, or when a loaded model has
                      no room (every slot busy and its queue at LOCALSERVE_MAX_QUEUE).
                      `?model=NAME` asks about that model only.
    POST /api/drain   {"timeout": "5m"} (optional; seconds or a Go-style duration, default
                      DEFAULT_DRAIN_TIMEOUT_S): stop taking new inference requests (503 +
                      Retry-After in the routed dialect's error shape), let the in-flight
                      ones finish, then the daemon exits (`serve()` waits for `Drain.done`).
                      Past the timeout the daemon exits anyway and the requests still
                      running are cancelled as on SIGTERM.

Which requests a drain refuses: the routes documented with the errors of a route that
loads a model and runs it (`openapi.GENERATION_ERRORS`: generate, chat, embed, the /v1
completions and embeddings, and any dialect added with the same errors), so the gate and
the documentation cannot disagree. Model
management, listings, /api/events, /metrics, /health and /ready keep answering until
the daemon exits.

Events on /api/events: `draining` {in_flight, timeout_s} when a drain starts, `drained`
{reason: "idle" | "timeout", abandoned, duration_s} when it ends. Metrics:
`localserve_node_draining` (0/1), `localserve_node_in_flight_requests` (inference
requests inside the gate) and `localserve_drain_refused_requests_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from localserve import __version__
from localserve.api import openapi
from localserve.api.errors import Handler
from localserve.api.requests import models_of, read_json, settings_of
from localserve.config import parse_duration
from localserve.errors import BadRequestError, BusyError, ConfigError
from localserve.scheduling.scheduler import ModelSnapshot
from localserve.telemetry.events import EventBus

log = logging.getLogger("localserve.api.fleet")

DEFAULT_DRAIN_TIMEOUT_S = 300.0
MAX_DRAIN_TIMEOUT_S = 86400.0  # a day: past it a typo, not a plan
# What a refused request (and /ready while draining) tells a client or router to wait:
# long enough for a router to move on to another node, short enough that a node back
# from a rolling upgrade is tried again soon.
DRAIN_RETRY_AFTER_S = 5
# /ready when a model has no room: the scheduler's queue answers 503 with this too.
FULL_RETRY_AFTER_S = 2
DRAIN_FIELDS = frozenset({"timeout"})


class NodeState(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"
    DRAINED = "drained"  # the daemon is about to exit (or, in-process, has nothing to do)


class RouteLike(Protocol):
    """The parts of `routes.Route` the gate reads."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def spec(self) -> Any: ...


def gated_routes(routes: Iterable[RouteLike]) -> frozenset[tuple[str, str]]:
    """(method, path) of the routes a drain refuses: those documented with the errors of
    a route that loads a model and runs it (`openapi.GENERATION_ERRORS`, 503 included)."""
    generation = set(openapi.GENERATION_ERRORS)
    return frozenset((r.method, r.path) for r in routes if generation <= set(r.spec.errors))


class Drain:
    """The node's drain state: counts the inference requests inside the gate, refuses new
    ones once draining, publishes `draining`/`drained`, and sets `done` when the last
    in-flight request has finished (or the timeout passed)."""

    def __init__(self, events: EventBus, clock: Callable[[], float] = time.monotonic) -> None:
        self.events = events
        self.clock = clock
        self.state = NodeState.SERVING
        self.in_flight = 0
        self.refused = 0
        self.timeout_s: float | None = None
        self.started_at: float | None = None
        self.done = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def draining(self) -> bool:
        return self.state is not NodeState.SERVING

    def begin(self, timeout_s: float) -> bool:
        """Start draining; False (and nothing changes) when a drain already started."""
        if self.draining:
            return False
        self.state = NodeState.DRAINING
        self.timeout_s = timeout_s
        self.started_at = self.clock()
        log.info("draining: %d in flight, timeout %gs", self.in_flight, timeout_s)
        self.events.publish("draining", in_flight=self.in_flight, timeout_s=timeout_s)
        self._task = asyncio.create_task(self._finish(timeout_s), name="drain")
        return True

    async def _finish(self, timeout_s: float) -> None:
        reason = "idle"
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            reason = "timeout"
        self.state = NodeState.DRAINED
        duration = self.clock() - (self.started_at or self.clock())
        log.info("drained (%s): %d requests still running", reason, self.in_flight)
        self.events.publish(
            "drained", reason=reason, abandoned=self.in_flight, duration_s=round(duration, 3)
        )
        self.done.set()

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one inference request for its whole length; BusyError while draining."""
        if self.draining:
            self.refused += 1
            raise BusyError(
                "this node is draining (shutting down for maintenance); "
                "retry on another node or later",
                retry_after=DRAIN_RETRY_AFTER_S,
            )
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def collector(self) -> DrainCollector:
        return DrainCollector(self)


class DrainCollector:
    """Prometheus gauges of the drain, read at scrape time."""

    def __init__(self, drain: Drain) -> None:
        self.drain = drain

    def collect(self) -> Iterable[Metric]:
        draining = GaugeMetricFamily(
            "localserve_node_draining", "1 while the node drains (refuses new inference)"
        )
        draining.add_metric([], 1.0 if self.drain.draining else 0.0)
        in_flight = GaugeMetricFamily(
            "localserve_node_in_flight_requests",
            "Inference requests the node is serving (all models, queued ones included)",
        )
        in_flight.add_metric([], float(self.drain.in_flight))
        refused = CounterMetricFamily(
            "localserve_drain_refused_requests",
            "Inference requests refused with 503 because the node was draining",
        )
        refused.add_metric([], float(self.drain.refused))
        return [draining, in_flight, refused]


DRAIN_KEY: web.AppKey[Drain] = web.AppKey("drain", Drain)
GATED_KEY: web.AppKey[frozenset[tuple[str, str]]] = web.AppKey("drain_gated", frozenset)


def _main_app(request: web.Request) -> web.Application:
    return request.match_info.apps[0] if request.match_info.apps else request.app


def drain_of(request: web.Request) -> Drain:
    return _main_app(request)[DRAIN_KEY]


@web.middleware
async def drain_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Inference routes pass through the drain gate; every other route is untouched."""
    app = _main_app(request)
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else ""
    if (request.method, path) not in app[GATED_KEY]:
        return await handler(request)
    with app[DRAIN_KEY].admit():
        return await handler(request)


def middleware() -> Middleware:
    return drain_middleware


# ---- handlers ----------------------------------------------------------------------------


def _model_row(row: ModelSnapshot, max_queue: int) -> dict[str, Any]:
    full = row["slots_busy"] >= row["slots"] and row["queue_depth"] >= max_queue
    return {
        "model": row["model"],
        "state": row["state"],
        "in_flight": row["in_flight"],
        "queue_depth": row["queue_depth"],
        "slots": row["slots"],
        "slots_busy": row["slots_busy"],
        "full": full,
    }


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers HTTP (draining included)."""
    drain = drain_of(request)
    return web.json_response({"status": "ok", "state": drain.state.value, "version": __version__})


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 while the node takes new requests; 503 + Retry-After when not."""
    drain = drain_of(request)
    max_queue = settings_of(request).max_queue
    models = [_model_row(row, max_queue) for row in models_of(request).running()]
    wanted = request.query.get("model")
    if wanted is not None:
        if not wanted.strip():
            raise BadRequestError("query parameter 'model' must not be empty")
        short = wanted.removesuffix(":latest")
        models = [m for m in models if m["model"] in (wanted, short, f"{short}:latest")]
    reason: str | None = None
    retry_after = FULL_RETRY_AFTER_S
    if drain.draining:
        reason, retry_after = drain.state.value, DRAIN_RETRY_AFTER_S
    elif any(m["full"] for m in models):
        full = ", ".join(m["model"] for m in models if m["full"])
        reason = f"no room: the queue of {full} is full"
    body: dict[str, Any] = {
        "ready": reason is None,
        "state": drain.state.value,
        "in_flight": drain.in_flight,
        "models": models,
    }
    if reason is None:
        return web.json_response(body)
    body["error"] = f"not ready: {reason}"
    body["code"] = "not_ready"
    return web.json_response(body, status=503, headers={"Retry-After": str(retry_after)})


def _drain_timeout(body: dict[str, Any]) -> float:
    unknown = sorted(set(body) - DRAIN_FIELDS)
    if unknown:
        raise BadRequestError(f"unsupported field {unknown[0]!r} (drain takes only 'timeout')")
    raw = body.get("timeout")
    if raw is None:
        return DEFAULT_DRAIN_TIMEOUT_S
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise BadRequestError("field 'timeout' must be a number of seconds or a duration")
    try:
        value = parse_duration(raw, DEFAULT_DRAIN_TIMEOUT_S)
    except ConfigError as exc:
        raise BadRequestError(f"field 'timeout': {exc}") from exc
    if value < 0 or not math.isfinite(value):
        raise BadRequestError("field 'timeout' must not be negative")
    if value > MAX_DRAIN_TIMEOUT_S:
        raise BadRequestError(f"field 'timeout' must be at most {MAX_DRAIN_TIMEOUT_S:g} s")
    return value


async def drain(request: web.Request) -> web.Response:
    """Start draining (202); a drain already under way is reported as it is (200)."""
    body = await read_json(request) if request.body_exists else {}
    timeout_s = _drain_timeout(body)
    node = drain_of(request)
    started = node.begin(timeout_s)
    answer = {
        "state": node.state.value,
        "in_flight": node.in_flight,
        "timeout_s": node.timeout_s,
    }
    return web.json_response(answer, status=202 if started else 200)
