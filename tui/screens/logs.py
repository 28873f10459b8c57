"""The logs screen: the daemon's events as they arrive."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import RichLog

from localserve.tui.format import clock_text
from localserve.tui.screens.base import MonitorScreen
from localserve.tui.state import MonitorState


class LogsScreen(MonitorScreen):
    MODE = "logs"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("c", "clear", "Clear view")]
    DEFAULT_CSS = """
    LogsScreen #log { height: 1fr; border: round $primary; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._last_seq = 0

    def compose(self) -> ComposeResult:
        yield RichLog(id="log", max_lines=2000, wrap=False, markup=False, highlight=False)
        yield from self.frame()

    def on_mount(self) -> None:
        self.query_one("#log").border_title = "Daemon events"
        super().on_mount()

    def render_state(self, state: MonitorState, changed: set[str]) -> None:
        if "log" not in changed:
            return
        log = self.query_one("#log", RichLog)
        for line in state.log:
            if line.seq <= self._last_seq:
                continue
            self._last_seq = line.seq
            text = Text(clock_text(line.time) + "  ", style="dim")
            text.append(f"{line.kind:<17}", style=_KIND_STYLES.get(line.kind, "cyan"))
            text.append(line.text)
            log.write(text)

    def action_clear(self) -> None:
        self.query_one("#log", RichLog).clear()


_KIND_STYLES = {
    "load_failed": "bold red",
    "request_ended": "yellow",
    "queue_full": "bold red",
    "unloaded": "magenta",
    "loaded": "green",
    "pull": "blue",
}
