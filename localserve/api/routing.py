"""Routes (served names) over HTTP (issue 14): `/api/routes...`, and the one place that
tells every dialect's answers which version served them.

    GET    /api/routes                         every route, with live per-version figures
    GET    /api/routes/{name}                  one route
    POST   /api/routes/{name}                  set: {"targets": [{"model", "weight"}],
                                                "reason", "expected_revision", "who"}
    DELETE /api/routes/{name}                  remove (?expected_revision=N)
    POST   /api/routes/{name}/rollback         {"to": revision, "reason"}
    GET    /api/routes/{name}/history          the route's changes, oldest first
    POST   /api/routes/{name}/rollout          start: {"to", "steps", "every", thresholds}
    GET    /api/routes/{name}/rollout          its status and this window's figures
    POST   /api/routes/{name}/rollout/pause|resume|abort

`middleware` opens the request's routing context (the `X-Localserve-Session` header) and
`on_prepare` sets `X-Localserve-Version` (and `X-Localserve-Route`) on the response of
any request that a route resolved, whatever its dialect.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from localserve.api.errors import Handler
from localserve.api.requests import read_json, routing_of
from localserve.errors import BadRequestError, LocalserveError
from localserve.routing import context
from localserve.routing.table import WHO, Route, Target

STATE_KEY: web.RequestKey[context.RequestRouting] = web.RequestKey(
    "localserve_routing", context.RequestRouting
)
SET_FIELDS = {"targets", "reason", "expected_revision", "who"}
ROLLBACK_FIELDS = {"to", "reason", "who"}
ROLLOUT_FIELDS = {
    "to",
    "steps",
    "every",
    "max_error_rate",
    "max_ttft_p95",
    "min_tokens_per_second",
    "max_poor_rate",
    "min_requests",
    "shadow",
}
ABORT_FIELDS = {"reason"}


def middleware() -> Middleware:
    @web.middleware
    async def routing_context(request: web.Request, handler: Handler) -> web.StreamResponse:
        session = request.headers.get(context.SESSION_HEADER) or None
        state, token = context.begin(session)
        request[STATE_KEY] = state
        try:
            return await handler(request)
        finally:
            context.end(token)

    return routing_context


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    state = request.get(STATE_KEY)
    if state is not None and state.version and state.route:
        response.headers[context.VERSION_HEADER] = state.version
        response.headers[context.ROUTE_HEADER] = state.route


# ---- bodies --------------------------------------------------------------------------------


def _refuse_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequestError(
            f"unsupported field(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})"
        )


def _optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequestError(f"{key}: must be a non-negative integer")
    return value


def _who(body: dict[str, Any]) -> str:
    who = body.get("who", "api")
    if who not in WHO or who == "rollout":
        raise BadRequestError(f"who: must be one of cli, api, tui, not {who!r}")
    return str(who)


def _reason(body: dict[str, Any]) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise BadRequestError("reason: must be a string")
    return reason[:500]


def _targets(body: dict[str, Any]) -> list[Target]:
    raw = body.get("targets")
    if raw is None:
        raise BadRequestError("missing field 'targets': a list of {model, weight}")
    if not isinstance(raw, list):
        raise BadRequestError("targets: must be a list of {model, weight}")
    return [Target.from_json(item) for item in raw]


def _name(request: web.Request) -> str:
    return request.match_info["name"]


# ---- handlers ------------------------------------------------------------------------------


async def list_routes(request: web.Request) -> web.Response:
    routing = routing_of(request)
    return web.json_response({"routes": [routing.describe(r) for r in routing.all()]})


async def get_route(request: web.Request) -> web.Response:
    routing = routing_of(request)
    return web.json_response(routing.describe(routing.get(_name(request))))


async def set_route(request: web.Request) -> web.Response:
    body = await read_json(request)
    _refuse_unknown(body, SET_FIELDS)
    routing = routing_of(request)
    route = await routing.set(
        _name(request),
        _targets(body),
        who=_who(body),
        reason=_reason(body),
        expected_revision=_optional_int(body, "expected_revision"),
    )
    return web.json_response(routing.describe(route))


async def delete_route(request: web.Request) -> web.Response:
    raw = request.query.get("expected_revision")
    expected: int | None = None
    if raw is not None:
        if not raw.isdigit():
            raise BadRequestError("expected_revision: must be a non-negative integer")
        expected = int(raw)
    removed = await routing_of(request).delete(_name(request), expected_revision=expected)
    return web.json_response({"deleted": removed.name, "revision": removed.revision})


async def rollback_route(request: web.Request) -> web.Response:
    body = await read_json(request) if request.can_read_body else {}
    _refuse_unknown(body, ROLLBACK_FIELDS)
    routing = routing_of(request)
    route = await routing.rollback(
        _name(request), to=_optional_int(body, "to"), who=_who(body), reason=_reason(body)
    )
    return web.json_response(routing.describe(route))


async def route_history(request: web.Request) -> web.Response:
    route = routing_of(request).get(_name(request))
    return web.json_response(
        {
            "name": route.name,
            "revision": route.revision,
            "history": [change.to_json() for change in route.history],
        }
    )


async def start_rollout(request: web.Request) -> web.Response:
    body = await read_json(request)
    _refuse_unknown(body, ROLLOUT_FIELDS)
    routing = routing_of(request)
    state = await routing.start_rollout(_name(request), body)
    return web.json_response(routing.rollouts.describe(state))


async def rollout_status(request: web.Request) -> web.Response:
    routing = routing_of(request)
    route = routing.get(_name(request))
    state = routing.rollouts.rollouts.get(route.name)
    if state is None:
        raise routing.rollouts._no_rollout(route.name)
    return web.json_response(routing.rollouts.describe(state))


async def pause_rollout(request: web.Request) -> web.Response:
    routing = routing_of(request)
    state = await routing.rollouts.pause(routing.get(_name(request)).name)
    return web.json_response(routing.rollouts.describe(state))


async def resume_rollout(request: web.Request) -> web.Response:
    routing = routing_of(request)
    state = await routing.rollouts.resume(routing.get(_name(request)).name)
    return web.json_response(routing.rollouts.describe(state))


async def abort_rollout(request: web.Request) -> web.Response:
    body = await read_json(request) if request.can_read_body else {}
    _refuse_unknown(body, ABORT_FIELDS)
    routing = routing_of(request)
    reason = _reason(body) or "aborted by hand"
    state = await routing.rollouts.abort(routing.get(_name(request)).name, reason)
    return web.json_response(routing.rollouts.describe(state))


# ---- routes in the model listings -----------------------------------------------------------


async def tag_entries(request: web.Request, entry: Any) -> list[dict[str, Any]]:
    """/api/tags rows of the routes: the largest-weight version's details under the
    route's name, with the targets in `route` (localserve's addition)."""
    routing = routing_of(request)
    rows: list[dict[str, Any]] = []
    for route, stored in await routing.primary_models():
        base: dict[str, Any] = dict(entry(stored)) if stored is not None else {}
        base.update(
            {
                "name": route.name,
                "model": route.name,
                "route": {"targets": [t.to_json() for t in route.targets]},
            }
        )
        rows.append(base)
    return rows


def _model_object(route: Route) -> dict[str, Any]:
    return {
        "id": route.name,
        "object": "model",
        "created": int(route.history[0].time) if route.history else 0,
        "owned_by": "localserve-route",
    }


def model_objects(request: web.Request) -> list[dict[str, Any]]:
    """/v1/models objects of the routes."""
    return [_model_object(route) for route in routing_of(request).all()]


def model_object(request: web.Request, raw_name: str) -> dict[str, Any] | None:
    """/v1/models/{model} of a route (None when the name is no route)."""
    try:
        route = routing_of(request).table.find(raw_name)
    except LocalserveError:
        return None
    return _model_object(route) if route is not None else None
