"""The "daemon not reachable" screen: retries on its own and offers to start the daemon."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Static

from localserve.tui.widgets import TooSmall

if TYPE_CHECKING:
    from localserve.tui.app import LocalserveApp


class UnreachableScreen(Screen[None]):
    """Shown instead of crashing when nothing answers; retries on its own."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "retry", "Retry"),
        Binding("s", "start", "Start the daemon"),
        Binding("q", "app.quit", "Quit"),
    ]
    DEFAULT_CSS = """
    UnreachableScreen { align: center middle; }
    UnreachableScreen #unreachable { width: 76; height: auto; border: thick $error;
                                     background: $surface; padding: 1 2; }
    """
    RETRY_S = 3.0

    def __init__(self, base_url: str, reason: str, can_start: bool) -> None:
        super().__init__()
        self.base_url = base_url
        self.reason = reason.removeprefix(f"localserve daemon not reachable at {base_url}: ")
        self.can_start = can_start
        self.status = f"retrying every {self.RETRY_S:g} s"

    @property
    def lsapp(self) -> LocalserveApp:
        return cast("LocalserveApp", self.app)

    def compose(self) -> ComposeResult:
        yield Static(self.text(), id="unreachable")
        yield TooSmall()
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(self.RETRY_S, self.action_retry)

    def on_resize(self, event: events.Resize) -> None:
        self.query_one(TooSmall).check(event.size.width, event.size.height)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "start":
            return self.can_start
        return True

    def text(self) -> Text:
        text = Text(f"localserve daemon not reachable at {self.base_url}\n", style="bold red")
        text.append(f"\n{self.reason}\n", style="dim")
        text.append("\n[r] retry now")
        if self.can_start:
            text.append("   [s] start the daemon in the background")
        text.append("   [q] quit\n")
        text.append(f"\n{self.status}", style="dim")
        return text

    def set_status(self, status: str) -> None:
        self.status = status
        for box in self.query("#unreachable").results(Static):  # none before compose
            box.update(self.text())

    def action_retry(self) -> None:
        self.lsapp.reconnect()

    def action_start(self) -> None:
        if self.can_start:
            self.set_status("starting the daemon...")
            self.lsapp.start_daemon_now()
