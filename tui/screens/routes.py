"""The routes screen (key 5): every route with its targets and rollout; for the selected
one, each version's weight, share and live figures side by side (requests, error rate,
TTFT p95, decode tok/s, poor answers) and its history. `B` rolls back, `P` pauses or
resumes its rollout, `A` aborts it (each after a confirmation; hidden with --readonly).

The screen reads `/api/routes` itself while it is shown (every refresh tick, at most
once a second), and again at once after a route or rollout event.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from localserve.client import routes_display as show
from localserve.tui.screens.base import PolledScreen, set_columns, set_text, set_titles
from localserve.tui.screens.dialogs import ConfirmScreen
from localserve.tui.state import MonitorState
from localserve.tui.widgets import highlighted_key, sync_table

JSON = dict[str, Any]
ROUTE_COLUMNS = (
    ("name", "NAME"),
    ("targets", "TARGETS"),
    ("revision", "REV"),
    ("updated", "UPDATED"),
    ("rollout", "ROLLOUT"),
)
VERSION_COLUMNS = tuple((h.lower(), h) for h in show.VERSION_HEADERS)
HISTORY_SHOWN = 8


class RoutesScreen(PolledScreen):
    MODE = "routes"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("B", "rollback", "Roll back"),
        Binding("P", "pause_resume", "Pause/resume rollout"),
        Binding("A", "abort", "Abort rollout"),
    ]
    DEFAULT_CSS = """
    RoutesScreen #routes { height: 1fr; border: round $primary; }
    RoutesScreen #route-detail { height: 2fr; }
    RoutesScreen #versions { height: auto; max-height: 12; border: round $primary; }
    RoutesScreen #route-history { height: 1fr; border: round $primary; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.routes: list[JSON] = []
        self.error = ""

    def compose(self) -> ComposeResult:
        yield DataTable(id="routes", cursor_type="row", zebra_stripes=True)
        with Vertical(id="route-detail"):
            yield DataTable(id="versions", cursor_type="none")
            yield Static(id="route-history")
        yield from self.frame()

    def on_mount(self) -> None:
        set_columns(self.query_one("#routes", DataTable), ROUTE_COLUMNS)
        set_columns(self.query_one("#versions", DataTable), VERSION_COLUMNS)
        set_titles(self, routes="Routes", versions="Versions (last 5 min)", route_history="History")
        super().on_mount()
        self.poll()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("rollback", "pause_resume", "abort") and self.lsapp.readonly:
            return None
        return True

    # ---- data ---------------------------------------------------------------------------

    def render_state(self, state: MonitorState, changed: set[str]) -> None:
        if self.poll_due() or state.routes_changed:
            state.routes_changed = False
            self.poll()

    async def fetch(self) -> None:
        self.routes = await self.lsapp.source.routes()
        self.error = ""

    def fetch_failed(self, message: str) -> None:
        self.error = message

    def show_polled(self) -> None:
        self.show_routes()

    def selected(self) -> JSON | None:
        key = highlighted_key(self.query_one("#routes", DataTable))
        return next((r for r in self.routes if r["name"] == key), None)

    def show_routes(self) -> None:
        rows = [
            (str(r["name"]), row)
            for r, row in zip(self.routes, show.list_rows(self.routes), strict=True)
        ]
        sync_table(self.query_one("#routes", DataTable), [(k, tuple(cells)) for k, cells in rows])
        self.show_selected()

    @on(DataTable.RowHighlighted, "#routes")
    def _highlighted(self) -> None:
        self.show_selected()

    def show_selected(self) -> None:
        route = self.selected()
        versions = self.query_one("#versions", DataTable)
        history = self.query_one("#route-history", Static)
        if route is None:
            sync_table(versions, [])
            message = self.error or "no routes: `localserve route set NAME MODEL` makes one"
            set_text(history, Text(message, style="dim"))
            return
        rows = show.version_rows(route)
        sync_table(versions, [(row[0], tuple(_styled(row))) for row in rows])
        text = Text("\n".join(show.route_summary(route)) + "\n\n", style="bold")
        changes = route.get("history") or []
        if not changes:
            text.append("(history: press B to roll back; `localserve route history`)", style="dim")
        for line in show.history_rows(changes[-HISTORY_SHOWN:]):
            text.append("  ".join(line) + "\n")
        set_text(history, text)

    # ---- actions ------------------------------------------------------------------------

    def _confirm(self, question: str, detail: str, then: Any) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                then()

        self.app.push_screen(ConfirmScreen(question, detail), answered)

    def action_rollback(self) -> None:
        route = self.selected()
        if route is None:
            self.app.bell()
            return
        name = str(route["name"])
        self._confirm(
            f"Roll {name} back to its previous state?",
            f"now: {show.targets_text(route['targets'])}",
            lambda: self.run_action_on(name, None),
        )

    def action_pause_resume(self) -> None:
        route = self.selected()
        rollout = (route or {}).get("rollout") or {}
        if route is None or rollout.get("status") not in ("running", "paused"):
            self.app.bell()
            return
        action = "pause" if rollout["status"] == "running" else "resume"
        name = str(route["name"])
        self._confirm(
            f"{action.capitalize()} the rollout of {name}?",
            show.rollout_text(rollout),
            lambda: self.run_action_on(name, action),
        )

    def action_abort(self) -> None:
        route = self.selected()
        rollout = (route or {}).get("rollout") or {}
        if route is None or rollout.get("status") not in ("running", "paused"):
            self.app.bell()
            return
        name = str(route["name"])
        self._confirm(
            f"Abort the rollout of {name}?",
            f"all traffic goes back to {rollout.get('stable')} at once",
            lambda: self.run_action_on(name, "abort"),
        )

    @work(group="routes-action")
    async def run_action_on(self, name: str, action: str | None) -> None:
        """`action` on the route's rollout (pause, resume, abort), or None: roll back."""
        source = self.lsapp.source
        what = f"{action or 'rollback'} {name}"
        call = (
            source.rollback_route(name, who="tui")
            if action is None
            else source.rollout(name, action, reason="from the TUI" if action == "abort" else None)
        )
        if await self.lsapp._call_daemon(what, call):
            self.app.notify(f"{what}: done")
        self.poll()


def _styled(row: list[str]) -> list[Text | str]:
    """Error and poor-answer rates in red when not zero."""
    cells: list[Text | str] = list(row)
    for index in (4, 7):
        if row[index] not in ("-", "0%"):
            cells[index] = Text(row[index], style="bold red")
    return cells
