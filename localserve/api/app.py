"""The daemon: configuration in, an aiohttp server with a clear lifecycle out.

    settings = load_settings().validate()
    daemon = Daemon(settings)
    await daemon.start()      # binds, then starts the scheduler and monitor
    ...
    await daemon.stop()       # stops accepting, cancels in-flight work, stops runners

The app: the main app serves Ollama's dialect and localserve's own routes, the `/v1`
sub-app OpenAI's, the `/v1/messages` sub-app Anthropic's; each has its own error
middleware (localserve.api.errors), and the security middleware
(localserve.api.security) guards all of them. Routes reach the daemon only
through the services in localserve.api.requests. `serve(settings)` runs the daemon until
SIGINT/SIGTERM. This module (and all of localserve/) never imports typer, rich or textual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from aiohttp import web

from localserve import __version__
from localserve.access.service import Access
from localserve.api import fleet
from localserve.api import routing as routing_api
from localserve.api.access import ACCESS_KEY
from localserve.api.errors import (
    ERROR_SHAPE_KEY,
    anthropic_error,
    error_middleware,
    ollama_error,
    openai_error,
)
from localserve.api.requests import (
    INFERENCE_KEY,
    MODELS_KEY,
    ROUTING_KEY,
    SETTINGS_KEY,
    TELEMETRY_KEY,
    Telemetry,
)
from localserve.api.routes import ANTHROPIC_PREFIX, EXTRA_ROUTES, ROUTES, V1_PREFIX, Route
from localserve.api.security import security_middleware
from localserve.config import Settings
from localserve.routing.metrics import RouteMetrics
from localserve.routing.service import Routing
from localserve.scheduling.gpu import GpuProbe
from localserve.scheduling.scheduler import MemoryProbe, Scheduler
from localserve.service.inference import Inference
from localserve.service.models import Models
from localserve.store.store import Store
from localserve.telemetry.events import EventBus
from localserve.telemetry.metrics import Metrics
from localserve.telemetry.monitor import SystemMonitor

__all__ = ["EXTRA_ROUTES", "ROUTES", "Daemon", "Route", "serve"]

log = logging.getLogger("localserve.api.app")


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
        self.inference = Inference(settings, self.store, self.scheduler, self.events)
        self.models = Models(self.store, self.scheduler, self.events, settings.max_blob_bytes)
        # -- monitoring (issue 6): system samples on the bus; Prometheus registry
        self.monitor = SystemMonitor(self.events, self.scheduler.snapshot, self.scheduler.gpu)
        self.metrics = Metrics(self.events, self.scheduler.snapshot, lambda: self.monitor.latest)
        # -- fleet (issue 15): the drain gate of the inference routes; `serve` exits once
        # a drain is done (localserve.api.fleet)
        self.drain = fleet.Drain(self.events)
        self.metrics.registry.register(self.drain.collector())
        # -- routes (issue 14): served names resolved in Inference.resolve
        self.routing = Routing(
            self.store,
            self.events,
            load=lambda version: self.inference.load(version, {}, None),
            snapshot=self.scheduler.snapshot,
            start=self.inference.start,  # shadow traffic
        )
        self.inference.routing = self.routing
        RouteMetrics(self.routing, self.metrics.registry)
        # -- keys, limits, usage (issue 16): checked by the security middleware
        self.access = Access(settings, self.events, self.metrics.registry)
        self._runner: web.AppRunner | None = None
        self.port = settings.port

    def build_app(self) -> web.Application:
        # The error middleware is outermost, so it also writes the security middleware's
        # refusals (in the shape of the app that routed the request).
        app = web.Application(
            middlewares=[
                error_middleware(),
                security_middleware,
                fleet.middleware(),
                routing_api.middleware(),  # routes (issue 14)
            ],
            client_max_size=self.settings.max_body_bytes,
        )
        app[fleet.DRAIN_KEY] = self.drain
        app[fleet.GATED_KEY] = fleet.gated_routes(ROUTES + EXTRA_ROUTES)
        app[ERROR_SHAPE_KEY] = ollama_error
        app[SETTINGS_KEY] = self.settings
        app[INFERENCE_KEY] = self.inference
        app[MODELS_KEY] = self.models
        app[TELEMETRY_KEY] = Telemetry(self.events, self.metrics)
        app[ROUTING_KEY] = self.routing  # routes (issue 14)
        app[ACCESS_KEY] = self.access  # keys (issue 16)
        app.on_response_prepare.append(self.access.on_response_prepare)
        app.on_response_prepare.append(routing_api.on_prepare)
        v1 = web.Application(middlewares=[error_middleware()])
        v1[ERROR_SHAPE_KEY] = openai_error
        # Anthropic's Messages API lives under /v1 but answers errors in Anthropic's shape:
        # its own sub-app, whose longer prefix routes /v1/messages[/...] before /v1's.
        messages = web.Application(middlewares=[error_middleware()])
        messages[ERROR_SHAPE_KEY] = anthropic_error
        for route in ROUTES + EXTRA_ROUTES:
            path = route.path
            if path == ANTHROPIC_PREFIX or path.startswith(ANTHROPIC_PREFIX + "/"):
                messages.router.add_route(
                    route.method, path[len(ANTHROPIC_PREFIX) :], route.handler
                )
            elif path.startswith(V1_PREFIX + "/"):
                v1.router.add_route(route.method, path[len(V1_PREFIX) :], route.handler)
            else:
                app.router.add_route(route.method, path, route.handler)
        app.add_subapp(ANTHROPIC_PREFIX, messages)
        app.add_subapp(V1_PREFIX, v1)
        return app

    async def start(self) -> None:
        """Bind the port, then start the scheduler and monitor; a failure undoes it all."""
        await asyncio.to_thread(self.store.collect_garbage)
        await asyncio.to_thread(self.access.start)  # keys (issue 16): a bad keys file stops here
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
            await self.routing.start()  # routes (issue 14): the table's rollouts resume
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
            await self.drain.close()  # fleet (issue 15)
            await self.routing.stop()  # routes (issue 14)
            await self.monitor.stop()  # monitoring (issue 6)
            await self.scheduler.close()
            self.access.close()  # keys (issue 16)
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
        # A signal, or the end of a drain (`localserve daemon drain`, POST /api/drain).
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(daemon.drain.done.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        if daemon.drain.done.is_set() and not stop.is_set():
            log.info("drained: shutting down")
        else:
            log.info("shutting down (send the signal again to exit at once)")
        await daemon.stop()

    try:
        asyncio.run(main())
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
