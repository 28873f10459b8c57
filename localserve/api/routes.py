"""The route table: every route with its handler and its OpenAPI description.

The app (localserve.api.app) mounts `ROUTES` and `MONITORING_ROUTES` on the main app and
the `/v1/...` ones on the OpenAI sub-app; `/openapi.json` is made from the same table.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from localserve import __version__
from localserve.api import monitoring, ollama, openai
from localserve.api import openapi as openapi_spec
from localserve.api.errors import Handler

V1_PREFIX = "/v1"


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
]
