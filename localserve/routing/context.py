"""What one HTTP request tells the routing and learns from it, without the service
layer knowing about HTTP.

The API's routing middleware (localserve.api.routing) opens a `RequestRouting` for each
request (the `X-Localserve-Session` header in `session`); `Inference.resolve` reads the
session key from it and writes the route and the serving version into it; the middleware
then sets the `X-Localserve-Version` response header from it, for every dialect alike.
Outside a request (tests, the benchmark calling the service directly) there is none and
nothing is recorded.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

SESSION_HEADER = "X-Localserve-Session"
VERSION_HEADER = "X-Localserve-Version"
ROUTE_HEADER = "X-Localserve-Route"


@dataclass
class RequestRouting:
    session: str | None = None
    route: str | None = None  # the route the request named, when it named one
    version: str | None = None  # the installed model that serves it


_CURRENT: contextvars.ContextVar[RequestRouting | None] = contextvars.ContextVar(
    "localserve_request_routing", default=None
)


def current() -> RequestRouting | None:
    return _CURRENT.get()


def begin(session: str | None) -> tuple[RequestRouting, contextvars.Token[RequestRouting | None]]:
    state = RequestRouting(session=session)
    return state, _CURRENT.set(state)


def end(token: contextvars.Token[RequestRouting | None]) -> None:
    _CURRENT.reset(token)


@dataclass(frozen=True)
class Pick:
    route: str  # the route's display name
    version: str  # the installed model chosen for this request


class RouteResolver(Protocol):
    """What `Inference.resolve` asks: is this name a route, and which version serves?"""

    def pick(self, raw_name: str, session: str | None) -> Pick | None: ...

    def shadowed(self, generation: Any, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The generation's events, tapped for shadow traffic when its route has a
        rollout with `shadow` (localserve.routing.service), else as they are."""
        ...
