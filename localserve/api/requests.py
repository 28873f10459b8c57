"""What every route shares: the services it may call (app keys) and reading the body.

Routes reach the daemon only through these: `inference_of` (the one generation and
embedding flow), `models_of` (model management), `settings_of`, `telemetry_of`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from localserve.config import Settings
from localserve.errors import BadRequestError, TooLargeError
from localserve.routing.service import Routing
from localserve.service.inference import Inference
from localserve.service.models import Models
from localserve.service.options import get_str, require_object
from localserve.telemetry.events import EventBus
from localserve.telemetry.metrics import Metrics


@dataclass(frozen=True)
class Telemetry:
    events: EventBus
    metrics: Metrics


SETTINGS_KEY: web.AppKey[Settings] = web.AppKey("settings", Settings)
INFERENCE_KEY: web.AppKey[Inference] = web.AppKey("inference", Inference)
MODELS_KEY: web.AppKey[Models] = web.AppKey("models", Models)
TELEMETRY_KEY: web.AppKey[Telemetry] = web.AppKey("telemetry", Telemetry)
ROUTING_KEY: web.AppKey[Routing] = web.AppKey("routing", Routing)  # routes (issue 14)


def _root(request: web.Request) -> web.Application:
    """The main app (the /v1 sub-app shares its services)."""
    return request.match_info.apps[0] if request.match_info.apps else request.app


def inference_of(request: web.Request) -> Inference:
    return _root(request)[INFERENCE_KEY]


def models_of(request: web.Request) -> Models:
    return _root(request)[MODELS_KEY]


def settings_of(request: web.Request) -> Settings:
    return _root(request)[SETTINGS_KEY]


def telemetry_of(request: web.Request) -> Telemetry:
    return _root(request)[TELEMETRY_KEY]


def routing_of(request: web.Request) -> Routing:
    return _root(request)[ROUTING_KEY]


async def read_json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"invalid JSON body: {exc.msg} at position {exc.pos}") from exc
    except UnicodeDecodeError as exc:
        raise BadRequestError("request body is not UTF-8") from exc
    except web.HTTPRequestEntityTooLarge as exc:
        limit = settings_of(request).max_body_bytes
        raise TooLargeError(f"request body too large (limit {limit})") from exc
    return require_object(body)


def model_field(body: dict[str, Any]) -> str:
    """Ollama accepts `model` and the older `name`."""
    value = get_str(body, "model") or get_str(body, "name")
    if not value:
        raise BadRequestError("missing field 'model'")
    return value


def embedding_inputs(raw: Any) -> list[str]:
    """`input` of both dialects' embedding routes: a string or a list of strings."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return list(raw)
    raise BadRequestError("input must be a string or a list of strings")
