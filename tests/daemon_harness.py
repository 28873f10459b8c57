"""Run a real localserve daemon (real aiohttp server, real runner processes) in a
background thread, so tests can use blocking clients (ollama, openai, requests-style).

Also the `/api/events` handshake for tests: the stream's first event is `subscribed`
(`event: subscribed`, data `{"type": "subscribed"}`), sent once the daemon has subscribed
the client to its bus; `LocalserveClient.events(subscribed=...)` sets an asyncio.Event
then. A test that connects and then triggers events waits for it first (that argument,
`SubscribedClient`, `read_sse_until_subscribed`), never for a fixed time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fake_hf_server import FakeHub

from localserve.api.app import Daemon
from localserve.client.http import LocalserveClient
from localserve.config import Settings
from localserve.names import ModelName
from localserve.scheduling.gpu import GpuProbe, NoGpuProbe
from localserve.scheduling.scheduler import MemoryProbe


class DaemonThread:
    def __init__(
        self, settings: Settings, memory: MemoryProbe | None = None, gpu: GpuProbe | None = None
    ) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.daemon = Daemon(settings, memory=memory, gpu=gpu or NoGpuProbe())
        self.store = self.daemon.store

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> DaemonThread:
        self._thread.start()
        self.call(self.daemon.start())
        return self

    def stop(self) -> None:
        self.call(self.daemon.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def add_model(self, name: str, path: Path, **manifest: Any) -> str:
        """Put a GGUF file in the store under `name` (bypassing HTTP)."""
        digest = self.store.import_file(path)
        self.store.create_model(ModelName.parse(name), digest, **manifest)
        return digest

    def ps(self) -> list[dict[str, Any]]:
        async def snapshot() -> list[dict[str, Any]]:
            return self.daemon.scheduler.snapshot()

        result: list[dict[str, Any]] = self.call(snapshot())
        return result


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings(
        host="127.0.0.1",
        port=0,
        models_dir=tmp_path / "models",
        state_dir=tmp_path / "state",
        num_threads=1,  # no oversubscription when tests share the 2 cores
        default_num_ctx=512,
        spare_runner=False,
    )
    return dataclasses.replace(base, **overrides)


@contextmanager
def running_daemon(
    tmp_path: Path,
    memory: MemoryProbe | None = None,
    gpu: GpuProbe | None = None,
    **overrides: Any,
) -> Iterator[DaemonThread]:
    daemon = DaemonThread(make_settings(tmp_path, **overrides), memory=memory, gpu=gpu).start()
    try:
        yield daemon
    finally:
        daemon.stop()


@contextmanager
def running_daemon_with_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: FakeHub
) -> Iterator[DaemonThread]:
    """A daemon whose pulls go to `hub` (started on the daemon's loop), with no HF token."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("localserve.store.hub.get_token", lambda: None)
    with running_daemon(tmp_path) as daemon:
        daemon.call(hub.start())
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        try:
            yield daemon
        finally:
            daemon.call(hub.stop())


# ---- the /api/events handshake ----------------------------------------------------------


class _Handshake(asyncio.Event):
    """An asyncio.Event that also calls `on_set` when set."""

    def __init__(self, on_set: Callable[[], None]) -> None:
        super().__init__()
        self._on_set = on_set

    def set(self) -> None:
        super().set()
        self._on_set()


class SubscribedClient(LocalserveClient):
    """A LocalserveClient that counts the `subscribed` handshakes of its `/api/events`
    streams, whoever reads them (the TUI, the CLI's spinner), so a test can wait until the
    daemon has subscribed that reader before it triggers the events the reader should see.
    A caller's own `subscribed` event is still set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subscriptions = 0

    def events(
        self, types: Sequence[str] | None = None, subscribed: asyncio.Event | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        def count() -> None:
            self.subscriptions += 1
            if subscribed is not None:
                subscribed.set()

        return super().events(types, subscribed=_Handshake(count))


def read_sse_until_subscribed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read a raw `/api/events` response from `sock` until its `subscribed` event (the
    bytes read so far are returned); AssertionError when it does not come in `timeout`."""
    sock.settimeout(timeout)
    received = b""
    try:
        while b"event: subscribed" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                raise AssertionError(f"/api/events closed before `subscribed`: {received!r}")
            received += chunk
    except TimeoutError:
        raise AssertionError(
            f"no `subscribed` event on /api/events within {timeout} s (read: {received!r})"
        ) from None
    finally:
        sock.settimeout(None)
    return received
