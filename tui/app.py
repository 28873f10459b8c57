"""`localserve tui` (alias `localserve top`): a Textual dashboard for the daemon.

    from localserve.tui.app import run
    run()                                  # the daemon from the settings (LOCALSERVE_HOST)
    run("http://127.0.0.1:11435", readonly=True, refresh=0.25)

Modes (keys 1-6): dashboard, models, chat, logs, routes, usage. `?`/F1 help, `q` quit,
Ctrl+P the command palette, `+`/`-` refresh faster/slower. Destructive actions use capital
letters (`D` delete, `U` unload); `--readonly` hides them and pull. When nothing answers, a "daemon
not reachable at ..." screen retries every few seconds and offers to start the daemon
(for a local address) instead of crashing.

Data flow: one worker reads `/api/events` into `MonitorState` (cheap per event); `ps`
is polled at most every refresh tick when an event says it changed, and at least every
second; `tags` when a pull or delete changed it, else every 10 s. A timer at the refresh
interval re-renders the visible screen only when the state changed, so the UI coalesces
bursts of events and never queues stale frames. The app talks to the daemon only through
a `DataSource` (`localserve.client.http.LocalserveClient`, or a fake in tests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar, TypeVar

from textual import work
from textual.app import App, ScreenStackError, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.timer import Timer

from localserve.client.http import ClientError, DaemonUnreachableError, LocalserveClient
from localserve.config import Settings, load_settings, parse_host
from localserve.tui.screens import (
    ChatScreen,
    DashboardScreen,
    HelpScreen,
    LogsScreen,
    ModelsScreen,
    MonitorScreen,
    RoutesScreen,
    UnreachableScreen,
    UsageScreen,
)
from localserve.tui.source import DataSource
from localserve.tui.state import MonitorState
from localserve.tui.widgets import MODE_KEYS

T = TypeVar("T")
REFRESH_STEPS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
DEFAULT_REFRESH = 0.5
PS_INTERVAL_S = 1.0  # /api/ps at least this often while connected
TAGS_INTERVAL_S = 10.0


def clamp_refresh(value: float) -> float:
    return max(REFRESH_STEPS[0], min(REFRESH_STEPS[-1], float(value)))


class LocalserveApp(App[None]):
    TITLE = "localserve"
    MODES: ClassVar[dict[str, str | Callable[[], Screen[Any]]]] = {
        "dashboard": DashboardScreen,
        "models": ModelsScreen,
        "chat": ChatScreen,
        "logs": LogsScreen,
        "routes": RoutesScreen,  # served names, versions, rollouts
        "usage": UsageScreen,  # usage by API key
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(key, f"mode('{name}')", title, show=False) for key, name, title in MODE_KEYS),
        *(
            Binding(f"f{index + 2}", f"mode('{name}')", title, show=False)
            for index, (_, name, title) in enumerate(MODE_KEYS)
        ),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("f1", "help", "Help", show=False),
        Binding("plus,equals_sign", "faster", "Faster refresh", show=False),
        Binding("minus", "slower", "Slower refresh", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        source: DataSource,
        *,
        readonly: bool = False,
        refresh: float = DEFAULT_REFRESH,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
        start_daemon: Callable[[], object] | None = None,
        mode: str = "dashboard",
        owns_source: bool = False,
    ) -> None:
        super().__init__()
        self.source = source
        self.readonly = readonly
        self.refresh_s = clamp_refresh(refresh)
        self.state = MonitorState(clock=clock)
        self.timer = timer  # measures TTFT and tok/s in the chat (injectable for tests)
        self.start_daemon = start_daemon
        self.initial_mode = mode
        self.owns_source = owns_source
        self.pending_chat_model: str | None = None
        self._timer: Timer | None = None
        self._ps_busy = False
        self._tags_busy = False
        self._last_ps = 0.0
        self._last_tags = 0.0
        self._unreachable: UnreachableScreen | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    def on_mount(self) -> None:
        self.switch_mode(self.initial_mode)
        self._timer = self.set_interval(self.refresh_s, self._tick)
        self.reconnect()

    async def on_unmount(self) -> None:
        if self.owns_source:
            await self.source.close()

    def reconnect(self) -> None:
        self._connect()

    @work(group="connect", exclusive=True)
    async def _connect(self) -> None:
        try:
            version = await self.source.version()
        except ClientError as exc:
            self.connection_lost(str(exc))
            return
        state = self.state
        state.daemon_version = version
        state.connected = True
        state.needs_ps = state.needs_tags = True
        state.touch("connection")
        if self._unreachable is not None:
            unreachable, self._unreachable = self._unreachable, None
            while unreachable in self.screen_stack:
                await self.pop_screen()
        self.run_worker(self._consume_events(), group="events", exclusive=True)
        self._poll_ps()
        self._poll_tags()
        self._render_top()

    async def _consume_events(self) -> None:
        reason = "the daemon closed the event stream"
        try:
            async for event in self.source.events():
                self.state.ingest(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any transport failure means: not connected
            reason = str(exc) or type(exc).__name__
        self.connection_lost(reason)

    def connection_lost(self, reason: str) -> None:
        """Show the "daemon not reachable" screen (once) and stop reading events."""
        was_connected = self.state.connected
        self.state.connected = False
        self.state.active.clear()
        self.state.touch("connection", "rates")
        if was_connected:
            self.workers.cancel_group(self, "events")
        if self._unreachable is not None and self._unreachable in self.screen_stack:
            self._unreachable.reason = reason.removeprefix(
                f"localserve daemon not reachable at {self.source.base_url}: "
            )
            self._unreachable.set_status(f"retrying every {UnreachableScreen.RETRY_S:g} s")
            return
        self._unreachable = UnreachableScreen(
            self.source.base_url, reason, can_start=self.start_daemon is not None
        )
        self.push_screen(self._unreachable)
        self._render_top()

    @work(group="start-daemon", exclusive=True)
    async def start_daemon_now(self) -> None:
        if self.start_daemon is None:
            return
        try:
            await asyncio.to_thread(self.start_daemon)
        except Exception as exc:
            if self._unreachable is not None:
                self._unreachable.set_status(f"could not start the daemon: {exc}")
            return
        self.reconnect()

    # ---- the refresh tick -----------------------------------------------------------------

    def _tick(self) -> None:
        if not self.is_running:  # shutting down: screens are being taken apart
            return
        state = self.state
        if state.connected:
            now = time.monotonic()
            since = now - self._last_ps
            due = since >= max(PS_INTERVAL_S, self.refresh_s)
            if not self._ps_busy and (due or (state.needs_ps and since >= self.refresh_s)):
                self._poll_ps()
            if not self._tags_busy and (
                state.needs_tags or now - self._last_tags >= TAGS_INTERVAL_S
            ):
                self._poll_tags()
        try:
            screen = self.screen
        except ScreenStackError:  # the app is shutting down: its screens are gone
            return
        if isinstance(screen, MonitorScreen):
            screen.refresh_from_state()

    async def _background_read(self, call: Awaitable[T]) -> T | None:
        """A poll's answer; None when it failed (no daemon: the unreachable screen shows)."""
        try:
            return await call
        except DaemonUnreachableError as exc:
            self.connection_lost(str(exc))
        except ClientError:
            pass
        return None

    @work(group="ps")
    async def _poll_ps(self) -> None:
        self._ps_busy = True
        self.state.needs_ps = False
        self._last_ps = time.monotonic()
        try:
            models = await self._background_read(self.source.ps())
        finally:
            self._ps_busy = False
        if models is not None:
            self.state.set_running(models)

    @work(group="tags")
    async def _poll_tags(self) -> None:
        self._tags_busy = True
        self.state.needs_tags = False
        self._last_tags = time.monotonic()
        try:
            models = await self._background_read(self.source.list_models())
        finally:
            self._tags_busy = False
        if models is not None:
            self.state.set_installed(models)

    def _render_top(self) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, MonitorScreen) and screen.is_mounted:
                screen.render_top()

    # ---- actions --------------------------------------------------------------------------

    def action_mode(self, mode: str) -> None:
        if not self.state.connected:
            self.bell()
            return
        self.switch_mode(mode)

    def switch_mode(self, mode: str) -> Any:
        result = super().switch_mode(mode)
        self.call_after_refresh(self._render_top)
        return result

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.readonly))

    def action_faster(self) -> None:
        self.set_refresh(max((s for s in REFRESH_STEPS if s < self.refresh_s), default=0.1))

    def action_slower(self) -> None:
        self.set_refresh(min((s for s in REFRESH_STEPS if s > self.refresh_s), default=5.0))

    def set_refresh(self, seconds: float) -> None:
        self.refresh_s = clamp_refresh(seconds)
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_interval(self.refresh_s, self._tick)
        self._render_top()

    def open_chat(self, model: str) -> None:
        self.pending_chat_model = model
        if self.current_mode == "chat" and isinstance(self.screen, ChatScreen):
            self.screen.choose(model)
            self.pending_chat_model = None
        else:
            self.switch_mode("chat")

    def _refused(self, what: str) -> bool:
        if self.readonly:
            self.notify(f"read-only: {what} is disabled", severity="warning")
        return self.readonly

    @work(group="pull")
    async def start_pull(self, model: str) -> None:
        if self._refused("pull"):
            return
        self.notify(f"pulling {model}")
        try:
            async for _ in self.source.pull(model):
                pass  # progress comes through the event stream (pull events)
        except DaemonUnreachableError as exc:
            self.connection_lost(str(exc))
            return
        except ClientError as exc:
            self.notify(f"pull {model}: {exc}", severity="error", timeout=10)
            return
        self.state.needs_tags = True
        self.notify(f"pulled {model}")

    async def _call_daemon(self, what: str, call: Awaitable[object]) -> bool:
        """Await one daemon call; on failure tell the user (or show the unreachable screen)."""
        try:
            await call
        except DaemonUnreachableError as exc:
            self.connection_lost(str(exc))
            return False
        except ClientError as exc:
            self.notify(f"{what}: {exc}", severity="error", timeout=10)
            return False
        return True

    @work(group="model-action")
    async def delete_model(self, model: str) -> None:
        if self._refused("delete"):
            return
        if not await self._call_daemon(f"delete {model}", self.source.delete(model)):
            return
        self.state.set_installed([m for m in self.state.installed if m.get("name") != model])
        self.state.needs_tags = self.state.needs_ps = True
        self.notify(f"deleted {model}")

    @work(group="model-action")
    async def load_model(self, model: str) -> None:
        self.notify(f"loading {model}...")
        if await self._call_daemon(f"load {model}", self.source.load(model)):
            self.state.needs_ps = True
            self.notify(f"loaded {model}")

    @work(group="model-action")
    async def unload_model(self, model: str) -> None:
        if self._refused("unload"):
            return
        if await self._call_daemon(f"unload {model}", self.source.unload(model)):
            self.state.needs_ps = True
            self.notify(f"unloaded {model}")

    # ---- command palette ------------------------------------------------------------------

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for _, name, title in MODE_KEYS:
            yield SystemCommand(
                f"Go to {title}", f"Show the {title.lower()} screen", _bind(self.action_mode, name)
            )
        yield SystemCommand("Help", "Keys and actions", self.action_help)
        yield SystemCommand("Refresh faster", f"Now every {self.refresh_s:g}s", self.action_faster)
        yield SystemCommand("Refresh slower", f"Now every {self.refresh_s:g}s", self.action_slower)
        yield SystemCommand("Reconnect", "Retry the connection to the daemon", self.reconnect)
        if not self.readonly:
            yield SystemCommand("Pull a model...", "Download a model", self._palette_pull)
        loaded = self.state.loaded_names()
        for model in self.state.installed:
            name = str(model.get("name"))
            yield SystemCommand(f"Chat with {name}", "Open the chat", _bind(self.open_chat, name))
            if name not in loaded:
                yield SystemCommand(
                    f"Load {name}", "Load into memory", _bind(self.load_model, name)
                )
        if not self.readonly:
            for name in sorted(loaded):
                yield SystemCommand(
                    f"Unload {name}", "Stop the model now", _bind(self.unload_model, name)
                )

    def _palette_pull(self) -> None:
        from localserve.tui.screens import PullScreen

        def chosen(name: str | None) -> None:
            if name:
                self.start_pull(name)

        self.push_screen(PullScreen(), chosen)


def _bind(function: Callable[[str], object], argument: str) -> Callable[[], None]:
    def call() -> None:
        function(argument)

    return call


# ---- entry point ------------------------------------------------------------------------------


def run(
    base_url: str | None = None,
    *,
    readonly: bool = False,
    refresh: float = DEFAULT_REFRESH,
    settings: Settings | None = None,
) -> None:
    """Run the TUI in this terminal until the user quits.

    `base_url` defaults to the settings' (`LOCALSERVE_HOST`); the API key comes from the
    settings (`LOCALSERVE_API_KEY`). The "start the daemon" offer appears only for a local
    address (it runs `localserve.client.background.start_background` with those settings).
    """
    settings = settings or load_settings()
    if base_url:
        host, port = parse_host(base_url)
        settings = dataclasses.replace(settings, host=host, port=port)
    client = LocalserveClient(settings.base_url, api_key=settings.api_key)
    local = settings.is_loopback or settings.host in ("0.0.0.0", "::", "")
    chosen = settings

    def start_in_background() -> object:
        from localserve.client.background import start_background

        return start_background(chosen)

    start = start_in_background if local else None
    app = LocalserveApp(
        client, readonly=readonly, refresh=refresh, start_daemon=start, owns_source=True
    )
    app.run()
