"""The daemon: configuration in, an aiohttp server with a clear lifecycle out.

    settings = load_settings().validate()
    daemon = Daemon(settings)
    await daemon.start()      # binds, starts the scheduler
    ...
    await daemon.stop()       # stops accepting, cancels in-flight work, stops runners

`serve(settings)` runs that until SIGINT/SIGTERM. This module (and all of localserve/)
never imports typer, rich or textual.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from localserve import __version__, api_ollama, api_openai
from localserve.api_ollama import DAEMON_KEY
from localserve.config import LOOPBACK_NAMES, Settings
from localserve.errors import BusyError, LocalserveError
from localserve.events import EventBus
from localserve.gpu import GpuProbe
from localserve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from localserve.metrics import Metrics
from localserve.monitor import EventCoalescer, SystemMonitor
from localserve.names import ModelName
from localserve.scheduler import MemoryProbe, Scheduler
from localserve.service import ModelService
from localserve.store import Store

log = logging.getLogger("localserve.server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    body: str | None = None  # a short description of the JSON body, for /openapi.json


ROUTES: list[Route] = [
    Route("GET", "/", api_ollama.root, "Health check: 'localserve is running'"),
    Route("HEAD", "/", api_ollama.root, "Health check"),
    Route("GET", "/api/version", api_ollama.version, "Daemon version"),
    Route(
        "POST",
        "/api/generate",
        api_ollama.generate,
        "Generate a completion (NDJSON)",
        "model, prompt, system, raw, format, options, stream, keep_alive",
    ),
    Route(
        "POST",
        "/api/chat",
        api_ollama.chat,
        "Chat completion (NDJSON)",
        "model, messages, format, options, stream, keep_alive",
    ),
    Route(
        "POST",
        "/api/embed",
        api_ollama.embed,
        "Embeddings for one or more inputs",
        "model, input, truncate, options, keep_alive",
    ),
    Route(
        "POST",
        "/api/embeddings",
        api_ollama.embeddings_legacy,
        "Legacy single embedding",
        "model, prompt, options, keep_alive",
    ),
    Route("GET", "/api/tags", api_ollama.tags, "Installed models"),
    Route("GET", "/api/ps", api_ollama.ps, "Loaded models"),
    Route("POST", "/api/show", api_ollama.show, "Model details", "model"),
    Route(
        "POST",
        "/api/create",
        api_ollama.create,
        "Create a model from an uploaded blob",
        "model, files | from, template, system, parameters, stream",
    ),
    Route("HEAD", "/api/blobs/{digest}", api_ollama.blob_head, "Does the blob exist?"),
    Route(
        "POST",
        "/api/blobs/{digest}",
        api_ollama.blob_upload,
        "Upload a blob (raw bytes, verified against the digest)",
    ),
    Route("POST", "/api/copy", api_ollama.copy, "Copy a model", "source, destination"),
    Route("DELETE", "/api/delete", api_ollama.delete, "Delete a model", "model"),
    Route("POST", "/api/pull", api_ollama.pull, "Pull a model (NDJSON progress)", "model, stream"),
    Route(
        "POST",
        "/v1/chat/completions",
        api_openai.chat_completions,
        "OpenAI chat completions (SSE when stream)",
        "model, messages, stream, max_tokens, temperature, top_p, stop, seed, response_format",
    ),
    Route(
        "POST",
        "/v1/completions",
        api_openai.completions,
        "OpenAI completions (SSE)",
        "model, prompt, stream, max_tokens, temperature, top_p, stop, seed",
    ),
    Route("GET", "/v1/models", api_openai.models, "OpenAI model list"),
    Route("GET", "/v1/models/{model}", api_openai.model, "One OpenAI model"),
    Route("POST", "/v1/embeddings", api_openai.embeddings, "OpenAI embeddings", "model, input"),
]


def _openapi_path(path: str) -> str:
    return path


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "responses": {
                "200": {"description": "OK"},
                "400": {"description": "Bad input"},
                "404": {"description": "Unknown model or blob"},
                "503": {"description": "Busy: retry after the Retry-After header"},
            },
        }
        parameters = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in route.path.split("/")
            if part.startswith("{")
        ]
        if parameters:
            operation["parameters"] = parameters
        if route.body:
            properties = {
                field.strip(): {"description": field.strip()}
                for field in route.body.replace("|", ",").split(",")
            }
            operation["requestBody"] = {
                "content": {
                    "application/json": {"schema": {"type": "object", "properties": properties}}
                }
            }
        paths.setdefault(_openapi_path(route.path), {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "localserve", "version": __version__},
        "paths": paths,
    }


# ---- middlewares ---------------------------------------------------------------------------


def _error_response(request: web.Request, status: int, message: str) -> web.Response:
    if request.path.startswith("/v1/"):
        return web.json_response(api_openai.openai_error(status, message), status=status)
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except LocalserveError as exc:
        response = _error_response(request, exc.status, exc.message)
        if isinstance(exc, BusyError):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and exc.status != 413 else exc.reason
        if exc.status == 413:
            message = f"request body too large (limit {request.app[SETTINGS_KEY].max_body_bytes})"
        response = _error_response(request, exc.status, str(message))
        if exc.status == 405:
            response.headers["Allow"] = exc.headers.get("Allow", "")
        return response


SETTINGS_KEY: web.AppKey[Settings] = web.AppKey("settings")


def _host_name(header: str) -> str:
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """DNS-rebinding guard (Host), API key, and CORS (closed unless configured)."""
    settings = request.app[SETTINGS_KEY]
    host = _host_name(request.headers.get("Host", "")).lower()
    allowed_hosts = LOOPBACK_NAMES | {h.lower() for h in settings.allowed_hosts}
    if not settings.is_loopback:
        allowed_hosts |= {settings.host.lower()}
    if host not in allowed_hosts and not host.startswith("127.") and "*" not in allowed_hosts:
        return _error_response(request, 403, f"host {host!r} is not allowed")
    origin = request.headers.get("Origin")
    origin_allowed = origin is not None and ("*" in settings.origins or origin in settings.origins)
    if origin is not None and not origin_allowed:
        return _error_response(request, 403, f"origin {origin!r} is not allowed")
    if request.method == "OPTIONS" and origin_allowed:
        response: web.StreamResponse = web.Response(status=204)
    else:
        if settings.api_key and request.path != "/":
            expected = f"Bearer {settings.api_key}"
            if request.headers.get("Authorization", "") != expected:
                return _error_response(request, 401, "missing or invalid API key")
        response = await handler(request)
    if origin_allowed and origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, HEAD, OPTIONS"
        response.headers["Vary"] = "Origin"
    return response


# ---- daemon-level routes ---------------------------------------------------------------------


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(ROUTES + EXTRA_ROUTES))


# -- monitoring (issue 6): /api/events coalesces for slow clients; /metrics ------------


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events from the in-process bus: loads, unloads, requests and their
    live token rates, queue changes, pulls, system samples (see localserve.monitor).

    `?types=a,b` keeps only those event types. A task moves events from the bus into
    this client's `EventCoalescer` as they come, so the bus queue never fills; while the
    client is slow to read, newer samples replace queued ones and the buffer stays bounded.
    """
    daemon = request.app[DAEMON_KEY]
    wanted = {t for t in request.query.get("types", "").split(",") if t.strip()}
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    await response.write(b": localserve events\n\n")
    buffer = EventCoalescer()

    async def pump(queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            event = await queue.get()
            if not wanted or event["type"] in wanted:
                buffer.push(event)

    async with daemon.events.subscribe() as queue:
        pumping = asyncio.create_task(pump(queue), name="sse-pump")
        try:
            while True:
                batch = await buffer.wait(15)
                if not batch:
                    await response.write(b": keep-alive\n\n")
                    continue
                data = "".join(
                    f"event: {event['type']}\ndata: {json.dumps(event, default=str)}\n\n"
                    for event in batch
                )
                await response.write(data.encode())
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumping


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition (localserve.metrics)."""
    body = request.app[DAEMON_KEY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


EXTRA_ROUTES: list[Route] = [
    Route("GET", "/openapi.json", openapi, "This document"),
    Route(
        "GET",
        "/api/events",
        events,
        "Server-sent events: loads, unloads, requests, token rates, pulls, system samples"
        " (?types=a,b filters)",
    ),
    Route("GET", "/metrics", metrics, "Prometheus metrics (text format)"),
]


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        memory: MemoryProbe | None = None,
        gpu: GpuProbe | None = None,
    ) -> None:
        self.settings = settings
        self.events = EventBus()
        self.store = Store(settings.models_dir)
        self.scheduler = Scheduler(settings, self.events, memory=memory, gpu=gpu)
        self.service = ModelService(settings, self.store, self.scheduler, self.events)
        # -- monitoring (issue 6): system samples on the bus; Prometheus registry
        self.monitor = SystemMonitor(self.events, self.scheduler.snapshot, self.scheduler.gpu)
        self.metrics = Metrics(self.events, self.scheduler.snapshot, lambda: self.monitor.latest)
        self._runner: web.AppRunner | None = None
        self._puller: Any = None
        self.port = settings.port

    def build_app(self) -> web.Application:
        app = web.Application(
            middlewares=[security_middleware, errors_middleware],
            client_max_size=self.settings.max_body_bytes,
        )
        app[DAEMON_KEY] = self
        app[SETTINGS_KEY] = self.settings
        for route in ROUTES + EXTRA_ROUTES:
            app.router.add_route(route.method, route.path, route.handler)
        return app

    def pull(self, name: ModelName, raw_name: str) -> AsyncIterator[dict[str, Any]]:
        if self._puller is None:
            from localserve.pull import Puller

            self._puller = Puller(self.store, events=self.events)
        items: AsyncIterator[dict[str, Any]] = self._puller.pull(name, raw_name)
        return items

    async def start(self) -> None:
        await asyncio.to_thread(self.store.collect_garbage)
        self.scheduler.start()
        self.monitor.start()  # monitoring (issue 6)
        self._runner = web.AppRunner(
            self.build_app(), handler_cancellation=True, access_log=None, shutdown_timeout=5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        log.info("localserve %s listening on %s:%d", __version__, self.settings.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.monitor.stop()  # monitoring (issue 6)
        await self.scheduler.close()
        log.info("localserve stopped")


def serve(settings: Settings) -> int:
    """Run the daemon in the foreground until SIGINT or SIGTERM; returns the exit code."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def main() -> None:
        daemon = Daemon(settings)
        await daemon.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down")
        await daemon.stop()

    try:
        asyncio.run(main())
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
