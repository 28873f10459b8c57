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
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from localserve import __version__
from localserve.api import ollama as api_ollama
from localserve.api import openai as api_openai
from localserve.api import openapi as openapi_spec
from localserve.api.hosts import host_allowed
from localserve.api.ollama import DAEMON_KEY
from localserve.config import Settings
from localserve.errors import BusyError, LocalserveError
from localserve.names import ModelName
from localserve.scheduling.gpu import GpuProbe
from localserve.scheduling.scheduler import MemoryProbe, Scheduler
from localserve.service.inference import ModelService
from localserve.store.store import Store
from localserve.telemetry.events import EventBus
from localserve.telemetry.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from localserve.telemetry.metrics import Metrics
from localserve.telemetry.monitor import EventCoalescer, SystemMonitor

log = logging.getLogger("localserve.api.app")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    spec: openapi_spec.Spec = openapi_spec.INFO  # body schema and statuses, for /openapi.json


ROUTES: list[Route] = [
    Route(
        "GET", "/", api_ollama.root, "Health check: 'localserve is running'", openapi_spec.HEALTH
    ),
    Route("HEAD", "/", api_ollama.root, "Health check", openapi_spec.HEALTH_HEAD),
    Route("GET", "/api/version", api_ollama.version, "Daemon version"),
    Route(
        "POST",
        "/api/generate",
        api_ollama.generate,
        "Generate a completion (NDJSON)",
        openapi_spec.GENERATE,
    ),
    Route("POST", "/api/chat", api_ollama.chat, "Chat completion (NDJSON)", openapi_spec.CHAT),
    Route(
        "POST",
        "/api/embed",
        api_ollama.embed,
        "Embeddings for one or more inputs",
        openapi_spec.EMBED,
    ),
    Route(
        "POST",
        "/api/embeddings",
        api_ollama.embeddings_legacy,
        "Legacy single embedding",
        openapi_spec.EMBEDDINGS,
    ),
    Route("GET", "/api/tags", api_ollama.tags, "Installed models"),
    Route("GET", "/api/ps", api_ollama.ps, "Loaded models"),
    Route("POST", "/api/show", api_ollama.show, "Model details", openapi_spec.SHOW),
    Route(
        "POST",
        "/api/create",
        api_ollama.create,
        "Create a model from an uploaded blob or an installed model",
        openapi_spec.CREATE,
    ),
    Route(
        "HEAD",
        "/api/blobs/{digest}",
        api_ollama.blob_head,
        "Does the blob exist?",
        openapi_spec.BLOB_HEAD,
    ),
    Route(
        "POST",
        "/api/blobs/{digest}",
        api_ollama.blob_upload,
        "Upload a blob (raw bytes, verified against the digest)",
        openapi_spec.BLOB_UPLOAD,
    ),
    Route("POST", "/api/copy", api_ollama.copy, "Copy a model", openapi_spec.COPY),
    Route("DELETE", "/api/delete", api_ollama.delete, "Delete a model", openapi_spec.DELETE),
    Route(
        "POST", "/api/pull", api_ollama.pull, "Pull a model (NDJSON progress)", openapi_spec.PULL
    ),
    Route(
        "POST",
        "/v1/chat/completions",
        api_openai.chat_completions,
        "OpenAI chat completions (SSE when stream)",
        openapi_spec.CHAT_COMPLETIONS,
    ),
    Route(
        "POST",
        "/v1/completions",
        api_openai.completions,
        "OpenAI completions (SSE when stream)",
        openapi_spec.COMPLETIONS,
    ),
    Route("GET", "/v1/models", api_openai.models, "OpenAI model list"),
    Route("GET", "/v1/models/{model}", api_openai.model, "One OpenAI model", openapi_spec.MODEL),
    Route(
        "POST",
        "/v1/embeddings",
        api_openai.embeddings,
        "OpenAI embeddings",
        openapi_spec.EMBEDDINGS_V1,
    ),
]


# ---- middlewares ---------------------------------------------------------------------------


def _error_response(
    request: web.Request, status: int, message: str, code: str | None = None
) -> web.Response:
    """The error in the dialect's shape: OpenAI's under /v1/, Ollama's elsewhere."""
    code = code or _STATUS_CODES.get(status, "error")
    if request.path.startswith("/v1/"):
        return web.json_response(api_openai.openai_error(status, message, code), status=status)
    return web.json_response({"error": message, "code": code}, status=status)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    500: "internal_error",
}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes JSON in the dialect's shape; an unexpected exception is logged
    and answered with a JSON 500 (never aiohttp's text/plain page)."""
    try:
        limit = request.app[SETTINGS_KEY].max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit and not request.path.startswith("/api/blobs/"):
            # Refused from the header alone: a huge declared body is never waited for.
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=declared)
        return await handler(request)
    except LocalserveError as exc:
        response = _error_response(request, exc.status, exc.message, exc.code)
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
        if exc.status == 413:
            response.force_close()  # the unread body is not drained
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error_response(
            request, 500, "internal error (logged by the daemon)", "internal_error"
        )


SETTINGS_KEY: web.AppKey[Settings] = web.AppKey("settings")


def _host_header(request: web.Request) -> str | None:
    """The request's one Host header; None when it is missing or repeated."""
    values = request.headers.getall("Host", [])
    return values[0] if len(values) == 1 else None


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """DNS-rebinding guard (Host), API key, and CORS (closed unless configured)."""
    settings = request.app[SETTINGS_KEY]
    host = _host_header(request)
    bind_host = None if settings.is_loopback else settings.host
    if not host_allowed(host, allowed_hosts=settings.allowed_hosts, bind_host=bind_host):
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
    """The OpenAPI document of every route (localserve.api.openapi)."""
    return web.json_response(openapi_spec.openapi_document(ROUTES + EXTRA_ROUTES, __version__))


# -- monitoring (issue 6): /api/events coalesces for slow clients; /metrics ------------


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events from the in-process bus: loads, unloads, requests and their
    live token rates, queue changes, pulls, system samples (see localserve.telemetry.monitor).

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
    """Prometheus text exposition (localserve.telemetry.metrics)."""
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
        openapi_spec.EVENTS,
    ),
    Route("GET", "/metrics", metrics, "Prometheus metrics (text format)", openapi_spec.METRICS),
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
            from localserve.store.pull import Puller

            self._puller = Puller(self.store, events=self.events)
        items: AsyncIterator[dict[str, Any]] = self._puller.pull(name, raw_name)
        return items

    async def start(self) -> None:
        """Bind the port, then start the scheduler and monitor; a failure undoes it all."""
        await asyncio.to_thread(self.store.collect_garbage)
        self._runner = web.AppRunner(
            self.build_app(), handler_cancellation=True, access_log=None, shutdown_timeout=5
        )
        try:
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
            await site.start()
            addresses = self._runner.addresses
            if addresses:
                self.port = int(addresses[0][1])
            self.scheduler.start()
            self.monitor.start()  # monitoring (issue 6)
        except BaseException:
            await self.stop()
            raise
        log.info("localserve %s listening on %s:%d", __version__, self.settings.host, self.port)

    async def stop(self) -> None:
        """Stop accepting, then stop the monitor and every runner; safe to call twice."""
        try:
            if self._runner is not None:
                runner, self._runner = self._runner, None
                await runner.cleanup()
        finally:
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

        def on_signal() -> None:
            if stop.is_set():  # the second Ctrl-C: stop waiting for a graceful shutdown
                log.warning("second signal: killing the runners and exiting now")
                daemon.scheduler.kill_runners()
                os._exit(130)
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, on_signal)
        await stop.wait()
        log.info("shutting down (send the signal again to exit at once)")
        await daemon.stop()

    try:
        asyncio.run(main())
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
