"""A fake `DataSource` with fixed data, for snapshot and Pilot tests without a daemon.

Everything is deterministic: timestamps are relative to FROZEN_NOW, which the app's clock
also returns, and the event stream is a fixed list followed by silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from localserve.client.http import DaemonUnreachableError, ModelNotFoundAPIError

JSON = dict[str, Any]

FROZEN_NOW = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
GB = 1_000_000_000
MB = 1_000_000


def iso(offset_s: float) -> str:
    moment = datetime.fromtimestamp(FROZEN_NOW, UTC) + timedelta(seconds=offset_s)
    return moment.isoformat().replace("+00:00", "Z")


def frozen_clock() -> float:
    return FROZEN_NOW


def details(family: str, size: str, quant: str) -> JSON:
    return {
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": size,
        "quantization_level": quant,
    }


INSTALLED: list[JSON] = [
    {
        "name": "smollm2:135m",
        "model": "smollm2:135m",
        "modified_at": iso(-3 * 86400),
        "size": 91 * MB,
        "digest": "5f6d0d8c2a1b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5",
        "details": details("llama", "135M", "Q4_1"),
    },
    {
        "name": "qwen2.5:7b-instruct",
        "model": "qwen2.5:7b-instruct",
        "modified_at": iso(-2 * 3600),
        "size": int(4.7 * GB),
        "digest": "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90",
        "details": details("qwen2", "7.6B", "Q4_K_M"),
    },
    {
        "name": "hf.co/TinyOrg/Tiny-GGUF:Q8_0",
        "model": "hf.co/TinyOrg/Tiny-GGUF:Q8_0",
        "modified_at": iso(-40 * 86400),
        "size": 12 * MB,
        "digest": "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "details": details("llama", "2M", "Q8_0"),
    },
]

RUNNING: list[JSON] = [
    {
        "name": "qwen2.5:7b-instruct",
        "model": "qwen2.5:7b-instruct",
        "size": int(5.9 * GB),
        "size_vram": int(3.1 * GB),
        "digest": INSTALLED[1]["digest"],
        "details": INSTALLED[1]["details"],
        "expires_at": iso(4 * 60 + 30),
        "context_length": 8192,
        "state": "ready",
        "in_flight": 1,
        "queue_depth": 2,
        "pid": 4242,
    },
    {
        "name": "smollm2:135m",
        "model": "smollm2:135m",
        "size": 180 * MB,
        "size_vram": 0,
        "digest": INSTALLED[0]["digest"],
        "details": INSTALLED[0]["details"],
        "expires_at": "2318-01-01T00:00:00Z",
        "context_length": 2048,
        "state": "ready",
        "in_flight": 0,
        "queue_depth": 0,
        "pid": 4243,
    },
]

SHOW: JSON = {
    "modelfile": "FROM smollm2:135m",
    "parameters": 'stop "<|im_end|>"\ntemperature 0.2',
    "template": "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}",
    "details": INSTALLED[1]["details"],
    "model_info": {
        "general.architecture": "qwen2",
        "general.parameter_count": 7_615_616_512,
        "qwen2.context_length": 32768,
        "qwen2.embedding_length": 3584,
    },
    "capabilities": ["completion"],
}


def system_event(offset_s: float, ram_used_gb: float, vram_used_gb: float, util: int) -> JSON:
    return {
        "type": "system",
        "time": FROZEN_NOW + offset_s,
        "ram_total": 32 * GB,
        "ram_available": int((32 - ram_used_gb) * GB),
        "ram_used": int(ram_used_gb * GB),
        "cpu_percent": 40.0,
        "gpus": [
            {
                "index": 0,
                "name": "NVIDIA RTX 4070",
                "vram_used": int(vram_used_gb * GB),
                "vram_total": 12 * GB,
                "utilization": util,
            }
        ],
        "runners": [
            {"model": "qwen2.5:7b-instruct", "pid": 4242, "rss": int(2.9 * GB), "vram": 3 * GB},
            {"model": "smollm2:135m", "pid": 4243, "rss": 180 * MB, "vram": 0},
        ],
    }


def script() -> list[JSON]:
    """The fixed event stream: history, finished requests, a live request, a pull."""
    events: list[JSON] = [
        {
            "type": "load_started",
            "time": FROZEN_NOW - 60,
            "model": "qwen2.5:7b-instruct",
            "estimate": int(2.8 * GB),
            "gpu_layers": 15,
        },
        {
            "type": "loaded",
            "time": FROZEN_NOW - 58,
            "model": "qwen2.5:7b-instruct",
            "pid": 4242,
            "rss": int(2.9 * GB),
            "load_duration": 1_840_000_000,
        },
        {
            "type": "unloaded",
            "time": FROZEN_NOW - 57,
            "model": "llama3.2:3b",
            "reason": "evicted",
            "for_model": "qwen2.5:7b-instruct",
        },
    ]
    for i, (prompt, out, ttft, rate) in enumerate(
        [(31, 120, 212.0, 38.2), (18, 64, 95.5, 41.0), (402, 256, 1480.0, 36.7)]
    ):
        events.append(
            {
                "type": "request_finished",
                "time": FROZEN_NOW - 50 + i * 10,
                "request_id": f"r-{i}",
                "model": "qwen2.5:7b-instruct",
                "endpoint": "chat" if i != 1 else "generate",
                "prompt_tokens": prompt,
                "eval_count": out,
                "ttft_ms": ttft,
                "tokens_per_second": rate,
                "duration_s": out / rate,
            }
        )
    events.append(
        {
            "type": "request_ended",
            "time": FROZEN_NOW - 15,
            "request_id": "r-3",
            "model": "smollm2:135m",
            "endpoint": "generate",
            "outcome": "cancel",
            "eval_count": 12,
        }
    )
    events.append(
        {
            "type": "request_started",
            "time": FROZEN_NOW - 9,
            "request_id": "r-live",
            "model": "qwen2.5:7b-instruct",
            "endpoint": "chat",
        }
    )
    rates = [0, 0, 12.5, 30.1, 36.0, 39.2, 40.4, 38.8, 41.3, 40.0]
    for second, rate in enumerate(rates):
        offset = -len(rates) + second + 1
        if rate:
            events.append(
                {
                    "type": "request_progress",
                    "time": FROZEN_NOW + offset,
                    "request_id": "r-live",
                    "model": "qwen2.5:7b-instruct",
                    "endpoint": "chat",
                    "eval_count": int(sum(rates[: second + 1])),
                    "tokens_per_second": rate,
                    "ttft_ms": 180.0,
                    "elapsed_s": float(second),
                }
            )
        events.append(
            system_event(offset, 11.0 + second * 0.4, 6.0 + second * 0.45, 20 + 7 * second)
        )
    events += [
        {
            "type": "pull",
            "time": FROZEN_NOW - 1,
            "model": "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
            "status": "pulling 6f2a1c0b9d8e",
            "digest": "sha256:6f2a1c0b9d8e",
            "completed": 402 * MB,
            "total": 808 * MB,
        },
        {
            "type": "queue",
            "time": FROZEN_NOW,
            "model": "qwen2.5:7b-instruct",
            "depth": 2,
        },
    ]
    return events


class FakeSource:
    """Implements localserve.tui.source.DataSource from fixed data; records mutations."""

    def __init__(
        self,
        *,
        base_url: str = "http://127.0.0.1:11435",
        events: list[JSON] | None = None,
        installed: list[JSON] | None = None,
        running: list[JSON] | None = None,
        reachable: bool = True,
        chat_reply: str = "The sky looks blue because air scatters blue light the most.",
    ) -> None:
        self.base_url = base_url
        self.script = script() if events is None else events
        self.installed = list(INSTALLED if installed is None else installed)
        self.running = list(RUNNING if running is None else running)
        self.reachable = reachable
        self.chat_reply = chat_reply
        self.calls: list[tuple[str, Any]] = []
        self.live: asyncio.Queue[JSON] = asyncio.Queue()
        self.script_read = False  # the reader asked for more after the last scripted event

    def _check(self) -> None:
        if not self.reachable:
            raise DaemonUnreachableError(self.base_url, "Cannot connect to host 127.0.0.1:11435")

    async def version(self) -> str:
        self._check()
        return "0.1.0"

    async def ps(self) -> list[JSON]:
        self._check()
        return list(self.running)

    async def list_models(self) -> list[JSON]:
        self._check()
        return list(self.installed)

    async def show(self, model: str) -> JSON:
        self._check()
        if not any(m["name"] == model for m in self.installed):
            raise ModelNotFoundAPIError(404, f"model {model!r} not found")
        return {**SHOW, "details": next(m for m in self.installed if m["name"] == model)["details"]}

    async def delete(self, model: str) -> None:
        self._check()
        self.calls.append(("delete", model))
        self.installed = [m for m in self.installed if m["name"] != model]

    async def load(self, model: str, keep_alive: str | float | None = None) -> JSON:
        self._check()
        self.calls.append(("load", model))
        return {"model": model, "done": True, "done_reason": "load"}

    async def unload(self, model: str) -> JSON:
        self._check()
        self.calls.append(("unload", model))
        return {"model": model, "done": True, "done_reason": "unload"}

    async def pull(self, model: str) -> AsyncIterator[JSON]:
        self._check()
        self.calls.append(("pull", model))
        total = 50 * MB
        for step in range(1, 6):
            completed = total * step // 5
            event = {
                "type": "pull",
                "time": FROZEN_NOW,
                "model": model,
                "status": "pulling abc",
                "digest": "sha256:abc",
                "completed": completed,
                "total": total,
            }
            self.live.put_nowait(event)
            yield {"status": "pulling abc", "digest": "sha256:abc", "completed": completed}
        self.live.put_nowait(
            {"type": "pull", "time": FROZEN_NOW, "model": model, "status": "success"}
        )
        yield {"status": "success"}

    async def chat(
        self,
        model: str,
        messages: list[JSON],
        *,
        options: JSON | None = None,
        format: str | JSON | None = None,
        keep_alive: str | float | None = None,
    ) -> AsyncIterator[JSON]:
        self._check()
        self.calls.append(("chat", model))
        for word in self.chat_reply.split(" "):
            yield {
                "model": model,
                "message": {"role": "assistant", "content": word + " "},
                "done": False,
            }
        yield {"model": model, "message": {"role": "assistant", "content": ""}, "done": True}

    async def events(
        self, types: Sequence[str] | None = None, subscribed: asyncio.Event | None = None
    ) -> AsyncIterator[JSON]:
        self._check()
        if subscribed is not None:  # as the real client: the handshake, then the events
            subscribed.set()
        for event in self.script:
            yield event
        self.script_read = True
        while True:
            event = await self.live.get()
            if event.get("type") == "__disconnect__":
                raise DaemonUnreachableError(self.base_url, "Server disconnected")
            yield event

    async def close(self) -> None:
        pass
