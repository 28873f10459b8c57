"""The daemon: configuration in, an aiohttp server with a clear lifecycle out.

    settings = load_settings().validate()
    daemon = Daemon(settings)
    await daemon.start()      # binds, then starts the scheduler and monitor
    ...
    await daemon.stop()       # stops accepting, cancels in-flight work, stops runners

The app: the main app serves Ollama's dialect and localserve's own routes, the `/v1`
sub-app OpenAI's; each has its own error middleware (localserve.api.errors), and the
security middleware (localserve.api.security) guards both. Routes reach the daemon only
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
from localserve.api.errors import ERROR_SHAPE_KEY, error_middleware, ollama_error, openai_error
from localserve.api.requests import (
    INFERENCE_KEY,
    MODELS_KEY,
    SETTINGS_KEY,
    TELEMETRY_KEY,
    Telemetry,
)
from localserve.api.routes import EXTRA_ROUTES, ROUTES, V1_PREFIX, Route
from localserve.api.security import security_middleware
from localserve.config import Settings
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
        self._runner: web.AppRunner | None = None
        self.port = settings.port

    def build_app(self) -> web.Application:
        # The error middleware is outermost, so it also writes the security middleware's
        # refusals (in the shape of the app that routed the request).
        app = web.Application(
            middlewares=[error_middleware(), security_middleware],
            client_max_size=self.settings.max_body_bytes,
        )
        app[ERROR_SHAPE_KEY] = ollama_error
        app[SETTINGS_KEY] = self.settings
        app[INFERENCE_KEY] = self.inference
        app[MODELS_KEY] = self.models
        app[TELEMETRY_KEY] = Telemetry(self.events, self.metrics)
        v1 = web.Application(middlewares=[error_middleware()])
        v1[ERROR_SHAPE_KEY] = openai_error
        for route in ROUTES + EXTRA_ROUTES:
            if route.path.startswith(V1_PREFIX + "/"):
                v1.router.add_route(route.method, route.path[len(V1_PREFIX) :], route.handler)
            else:
                app.router.add_route(route.method, route.path, route.handler)
        app.add_subapp(V1_PREFIX, v1)
        return app

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
