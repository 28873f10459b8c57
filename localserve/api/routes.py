"""The route table: every route with its handler and its OpenAPI description.

The app (localserve.api.app) mounts `ROUTES` and `MONITORING_ROUTES` on the main app,
the `/v1/...` ones on the OpenAI sub-app and `/v1/messages[/...]` on the Anthropic one;
`/openapi.json` is made from the same table.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from localserve import __version__
from localserve.api import access as access_api
from localserve.api import anthropic, fleet, monitoring, ollama, openai, responses
from localserve.api import openapi as openapi_spec
from localserve.api import routing as routing_api
from localserve.api.errors import Handler

V1_PREFIX = "/v1"
ANTHROPIC_PREFIX = openapi_spec.ANTHROPIC_PREFIX  # its own sub-app: Anthropic's error shape


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    spec: openapi_spec.Spec = openapi_spec.INFO  # body schema and statuses, for /openapi.json


ROUTES: list[Route] = [
    Route("GET", "/", ollama.root, "Health check: 'localserve is running'", openapi_spec.HEALTH),
    Route("HEAD", "/", ollama.root, "Health check", openapi_spec.HEALTH_HEAD),
    Route("GET", "/api/version", ollama.version, "Daemon version"),
    Route(
        "POST",
        "/api/generate",
        ollama.generate,
        "Generate a completion (NDJSON)",
        openapi_spec.GENERATE,
    ),
    Route("POST", "/api/chat", ollama.chat, "Chat completion (NDJSON)", openapi_spec.CHAT),
    Route(
        "POST",
        "/api/embed",
        ollama.embed,
        "Embeddings for one or more inputs",
        openapi_spec.EMBED,
    ),
    Route(
        "POST",
        "/api/embeddings",
        ollama.embeddings_legacy,
        "Legacy single embedding",
        openapi_spec.EMBEDDINGS,
    ),
    Route("GET", "/api/tags", ollama.tags, "Installed models"),
    Route("GET", "/api/ps", ollama.ps, "Loaded models"),
    Route("POST", "/api/show", ollama.show, "Model details", openapi_spec.SHOW),
    Route(
        "POST",
        "/api/create",
        ollama.create,
        "Create a model from an uploaded blob or an installed model",
        openapi_spec.CREATE,
    ),
    Route(
        "HEAD",
        "/api/blobs/{digest}",
        ollama.blob_head,
        "Does the blob exist?",
        openapi_spec.BLOB_HEAD,
    ),
    Route(
        "POST",
        "/api/blobs/{digest}",
        ollama.blob_upload,
        "Upload a blob (raw bytes, verified against the digest)",
        openapi_spec.BLOB_UPLOAD,
    ),
    Route("POST", "/api/copy", ollama.copy, "Copy a model", openapi_spec.COPY),
    Route("DELETE", "/api/delete", ollama.delete, "Delete a model", openapi_spec.DELETE),
    Route("POST", "/api/pull", ollama.pull, "Pull a model (NDJSON progress)", openapi_spec.PULL),
    Route(
        "POST",
        "/v1/chat/completions",
        openai.chat_completions,
        "OpenAI chat completions (SSE when stream)",
        openapi_spec.CHAT_COMPLETIONS,
    ),
    Route(
        "POST",
        "/v1/completions",
        openai.completions,
        "OpenAI completions (SSE when stream)",
        openapi_spec.COMPLETIONS,
    ),
    Route("GET", "/v1/models", openai.models, "OpenAI model list"),
    Route("GET", "/v1/models/{model}", openai.model, "One OpenAI model", openapi_spec.MODEL),
    Route(
        "POST",
        "/v1/embeddings",
        openai.embeddings,
        "OpenAI embeddings",
        openapi_spec.EMBEDDINGS_V1,
    ),
    Route(
        "POST",
        "/v1/responses",
        responses.create,
        "OpenAI Responses API, stateless (typed SSE events when stream)",
        openapi_spec.RESPONSES,
    ),
    Route(
        "POST",
        ANTHROPIC_PREFIX,
        anthropic.messages,
        "Anthropic Messages API (typed SSE events when stream; Anthropic's error shape)",
        openapi_spec.MESSAGES,
    ),
    Route(
        "POST",
        ANTHROPIC_PREFIX + "/count_tokens",
        anthropic.count_tokens,
        "Anthropic token counting: the tokens of the prompt the model would see",
        openapi_spec.COUNT_TOKENS,
    ),
]


async def openapi_document(request: web.Request) -> web.Response:
    """The OpenAPI document of every route (localserve.api.openapi)."""
    return web.json_response(openapi_spec.openapi_document(ROUTES + EXTRA_ROUTES, __version__))


EXTRA_ROUTES: list[Route] = [
    Route("GET", "/openapi.json", openapi_document, "This document"),
    Route(
        "GET",
        "/api/events",
        monitoring.events,
        "Server-sent events: loads, unloads, requests, token rates, pulls, system samples"
        " (?types=a,b filters)",
        openapi_spec.EVENTS,
    ),
    Route(
        "GET",
        "/metrics",
        monitoring.metrics,
        "Prometheus metrics (text format)",
        openapi_spec.METRICS,
    ),
    # -- fleet (issue 15): what a router (LiteLLM) needs from each node
    Route("GET", "/health", fleet.health, "Liveness (also while draining)", openapi_spec.LIVENESS),
    Route(
        "GET",
        "/ready",
        fleet.ready,
        "Readiness: per-model queue depth and in-flight counts; 503 while draining or full",
        openapi_spec.READY,
    ),
    Route(
        "POST",
        "/api/drain",
        fleet.drain,
        "Drain: refuse new inference (503), finish in-flight requests, then exit",
        openapi_spec.DRAIN,
    ),
]

# -- routes (issue 14): served names, rollbacks and rollouts (localserve.api.routing)
_ROUTE = "/api/routes/{name}"
EXTRA_ROUTES += [
    Route(
        "GET",
        "/api/routes",
        routing_api.list_routes,
        "Routes: targets, weights and live per-version figures",
        openapi_spec.ROUTE_LIST,
    ),
    Route("GET", _ROUTE, routing_api.get_route, "One route", openapi_spec.ROUTE_GET),
    Route(
        "POST",
        _ROUTE,
        routing_api.set_route,
        "Point a route at weighted installed models (creates it)",
        openapi_spec.ROUTE_SET,
    ),
    Route("DELETE", _ROUTE, routing_api.delete_route, "Remove a route", openapi_spec.ROUTE_DELETE),
    Route(
        "POST",
        _ROUTE + "/rollback",
        routing_api.rollback_route,
        "Return a route to its previous state (or the state after revision `to`)",
        openapi_spec.ROUTE_ROLLBACK,
    ),
    Route(
        "GET",
        _ROUTE + "/history",
        routing_api.route_history,
        "A route's changes, oldest first",
        openapi_spec.ROUTE_GET,
    ),
    Route(
        "POST",
        _ROUTE + "/rollout",
        routing_api.start_rollout,
        "Start a canary rollout to a candidate (steps, window, thresholds)",
        openapi_spec.ROLLOUT_START,
    ),
    Route(
        "GET",
        _ROUTE + "/rollout",
        routing_api.rollout_status,
        "The route's rollout: step, state, this window's figures",
        openapi_spec.ROUTE_GET,
    ),
    Route(
        "POST",
        _ROUTE + "/rollout/pause",
        routing_api.pause_rollout,
        "Hold the rollout's weights",
        openapi_spec.ROLLOUT_ACTION,
    ),
    Route(
        "POST",
        _ROUTE + "/rollout/resume",
        routing_api.resume_rollout,
        "Resume a paused rollout (a fresh window)",
        openapi_spec.ROLLOUT_ACTION,
    ),
    Route(
        "POST",
        _ROUTE + "/rollout/abort",
        routing_api.abort_rollout,
        "Abort: all traffic back to the stable version now",
        openapi_spec.ROLLOUT_ABORT,
    ),
]

# -- keys and usage (issue 16): API keys with scopes and limits (localserve.api.access)
EXTRA_ROUTES += [
    Route("GET", "/api/keys", access_api.list_keys, "API keys (admin)", openapi_spec.KEYS_LIST),
    Route(
        "POST",
        "/api/keys",
        access_api.create_key,
        "Add an API key: scopes, limits, priority, weight; the secret is shown once (admin)",
        openapi_spec.KEY_CREATE,
    ),
    Route(
        "DELETE",
        "/api/keys/{name}",
        access_api.revoke_key,
        "Revoke an API key at once (admin)",
        openapi_spec.KEY_REVOKE,
    ),
    Route(
        "GET",
        "/api/usage",
        access_api.usage,
        "Usage per key and model: requests, errors, tokens, busy seconds (?since=7d&key=)",
        openapi_spec.USAGE,
    ),
]
