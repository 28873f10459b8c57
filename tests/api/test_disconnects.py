"""No leaked capacity: hundreds of clients that disconnect at random moments (while
queued, right after the grant, mid-stream) leave no request in flight, nothing queued and
no busy slot, and the model still expires on time."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

from daemon_harness import running_daemon
from eventually import eventually
from gguf_factory import write_tiny_gguf

CLIENTS = 300


async def _client(port: int, delay_s: float, index: int) -> None:
    body = json.dumps(
        {
            "model": "tiny",
            "prompt": f"client {index}",
            "options": {"num_predict": 100_000},
            "keep_alive": 1,
        }
    ).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await writer.drain()
    if delay_s > 0:
        await asyncio.sleep(delay_s)  # the moment this client goes away (the test's input)
    writer.transport.abort()  # a hard disconnect, as a killed client would


async def _all_clients(port: int, rng: random.Random) -> None:
    # A third go away at once (queued or before the grant), the rest within 50 ms
    # (right after the grant, or mid-stream).
    delays = [0.0 if i % 3 == 0 else rng.uniform(0, 0.05) for i in range(CLIENTS)]
    await asyncio.gather(*(_client(port, d, i) for i, d in enumerate(delays)))


def test_clients_that_disconnect_at_random_moments_leak_no_capacity(tmp_path: Path) -> None:
    with running_daemon(tmp_path, num_parallel=2) as daemon:
        daemon.add_model("tiny", write_tiny_gguf(tmp_path / "a.gguf", "a"))
        asyncio.run(_all_clients(daemon.daemon.port, random.Random(1234)))

        def settled() -> bool:
            rows = daemon.ps()
            return bool(rows) and all(
                r["in_flight"] == 0 and r["queue_depth"] == 0 and r["slots_busy"] == 0 for r in rows
            )

        def slots_known_idle() -> bool:
            # slots_busy comes from the runner's stats: ask for fresh ones.
            scheduler = daemon.daemon.scheduler
            for model in list(scheduler.models.values()):
                if model.runner is not None:
                    daemon.call(model.runner.refresh_stats())
            return settled()

        eventually(slots_known_idle, timeout=30, interval=0.2, what="capacity released")
        # With nothing in flight, the 1 s keep-alive runs out and the model is unloaded.
        eventually(lambda: daemon.ps() == [], timeout=10, what="the model expired")
