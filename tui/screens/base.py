"""The base of the mode screens (top bar, footer, the too-small cover, rendering from
`MonitorState` only when its version moved) and helpers the screens share."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, cast

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from localserve.client.display import human_bytes
from localserve.client.http import ClientError, DaemonUnreachableError
from localserve.tui.format import text_bar
from localserve.tui.state import SECTIONS, MonitorState
from localserve.tui.widgets import TooSmall, TopBar

if TYPE_CHECKING:
    from localserve.tui.app import LocalserveApp

JSON = dict[str, Any]


class MonitorScreen(Screen[None]):
    """A mode screen: a top bar, a footer, the too-small cover; renders from the state."""

    MODE = ""
    rendered_version = -1
    _seen: dict[str, int] | None = None
    _ready = False  # set once on_mount has built the widgets (tables have their columns)

    @property
    def lsapp(self) -> LocalserveApp:
        return cast("LocalserveApp", self.app)

    def frame(self) -> ComposeResult:
        yield TopBar()
        yield TooSmall()
        yield Footer()

    def on_mount(self) -> None:
        self._ready = True
        self.render_top()
        self.refresh_from_state(force=True)

    def on_screen_resume(self) -> None:
        self.render_top()
        self.refresh_from_state(force=True)

    def on_resize(self, event: events.Resize) -> None:
        self.query_one(TooSmall).check(event.size.width, event.size.height)

    def render_top(self) -> None:
        app = self.lsapp
        self.query_one(TopBar).show(
            mode=self.MODE,
            base_url=app.source.base_url,
            connected=app.state.connected,
            version=app.state.daemon_version,
            refresh=app.refresh_s,
            readonly=app.readonly,
            node_state=app.state.node_state,
        )

    def refresh_from_state(self, force: bool = False) -> None:
        state = self.lsapp.state
        if not self._ready:  # the refresh tick can come before this screen's on_mount
            return
        if self._closing or self._closed or not self.is_attached:  # being removed
            return
        if force or state.version != self.rendered_version:
            self.rendered_version = state.version
            changed = (
                set(SECTIONS) if force or self._seen is None else state.changed_since(self._seen)
            )
            self._seen = dict(state.sections)
            if "connection" in changed:
                self.render_top()
            self.render_state(state, changed)

    def render_state(self, state: MonitorState, changed: set[str]) -> None:
        """Update the widgets of the `changed` state sections (on the refresh tick)."""


def set_text(widget: Static, text: Text) -> None:
    """Update a Static only when its text changed, with a layout pass only when its
    line count changed (a layout of the whole screen is the expensive part)."""
    previous: Text | None = getattr(widget, "_last_text", None)
    if previous is not None and previous == text:
        return
    lines = text.plain.count("\n")
    widget.update(text, layout=previous is None or previous.plain.count("\n") != lines)
    widget._last_text = text  # type: ignore[attr-defined]


def set_columns(table: DataTable[Any], columns: Iterable[tuple[str, str]]) -> None:
    """Add (key, label) columns to a table."""
    for key, label in columns:
        table.add_column(label, key=key)


def set_titles(screen: Screen[Any], **titles: str) -> None:
    """Set border titles by widget id (underscores in the keyword stand for dashes)."""
    for widget_id, title in titles.items():
        screen.query_one("#" + widget_id.replace("_", "-")).border_title = title


def pulls_text(state: MonitorState, width: int) -> Text:
    pulls = state.active_pulls()
    if not pulls:
        return Text("no pulls", style="dim")
    out = Text()
    for index, pull in enumerate(pulls):
        if index:
            out.append("\n")
        out.append(pull.model, style="bold")
        out.append("\n")
        if pull.error:
            out.append(f"error: {pull.error}", style="red")
            continue
        style = "green" if pull.status == "success" else None
        out.append_text(text_bar(pull.fraction, width, style=style or "cyan"))
        out.append(f" {pull.fraction * 100:3.0f}%\n")
        detail = pull.status
        if pull.total:
            detail += f"  {human_bytes(pull.completed)}/{human_bytes(pull.total)}"
        out.append(detail, style="dim")
    return out


class PolledScreen(MonitorScreen):
    """A screen that also polls one daemon endpoint (what no event carries), at most every
    `POLL_S` seconds or the app's refresh interval, one poll at a time: `fetch` reads it,
    `fetch_failed` keeps a client error to show, `show_polled` renders what was read."""

    POLL_S: ClassVar[float] = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._last_poll = 0.0
        self._polling = False

    def poll_due(self) -> bool:
        return time.monotonic() - self._last_poll >= max(self.POLL_S, self.lsapp.refresh_s)

    @work(group="poll", exclusive=True)
    async def poll(self) -> None:
        if self._polling:
            return
        self._polling = True
        self._last_poll = time.monotonic()
        try:
            await self.fetch()
        except DaemonUnreachableError as exc:
            self.lsapp.connection_lost(str(exc))
            return
        except ClientError as exc:
            self.fetch_failed(str(exc))
        finally:
            self._polling = False
        self.show_polled()

    async def fetch(self) -> None:
        raise NotImplementedError

    def fetch_failed(self, message: str) -> None:
        raise NotImplementedError

    def show_polled(self) -> None:
        raise NotImplementedError
