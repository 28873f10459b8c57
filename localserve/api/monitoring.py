"""`/api/events` (server-sent events) and `/metrics` (Prometheus)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web

from localserve.api.requests import telemetry_of
from localserve.telemetry.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from localserve.telemetry.monitor import EventCoalescer

SUBSCRIBED = b'event: subscribed\ndata: {"type": "subscribed"}\n\n'
KEEP_ALIVE_S = 15


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events from the in-process bus: loads, unloads, requests and their
    live token rates, queue changes, pulls, system samples (see localserve.telemetry.monitor).

    The first event is `subscribed`, sent once this client is subscribed to the bus: every
    event published after a client has read it reaches that client. `?types=a,b` keeps
    only those event types. A task moves events from the bus into this client's
    `EventCoalescer` as they come, so the bus queue never fills; while the client is slow
    to read, newer samples replace queued ones and the buffer stays bounded.
    """
    bus = telemetry_of(request).events
    wanted = {t for t in request.query.get("types", "").split(",") if t.strip()}
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    buffer = EventCoalescer()

    async def pump(queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            event = await queue.get()
            if not wanted or event["type"] in wanted:
                buffer.push(event)

    async with bus.subscribe() as queue:
        pumping = asyncio.create_task(pump(queue), name="sse-pump")
        try:
            await response.write(SUBSCRIBED)
            while True:
                batch = await buffer.wait(KEEP_ALIVE_S)
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
    body = telemetry_of(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})
