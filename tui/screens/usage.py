"""The usage screen (key 6): per API key and model, requests, errors, 429s, prompt and
generated tokens and runner busy time (`/api/usage`, the last 24 hours), and the requests
each key has waiting now, per model (`/api/ps` `queued_by_key`, fair share).

The screen reads `/api/usage` itself while it is shown (every refresh tick, at most every
two seconds); the waiting counts come from the app's `/api/ps` state.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from localserve.client.display import usage_cells
from localserve.tui.screens.base import PolledScreen, set_columns, set_text, set_titles
from localserve.tui.state import MonitorState
from localserve.tui.widgets import sync_table

JSON = dict[str, Any]
USAGE_COLUMNS = (
    ("key", "KEY"),
    ("model", "MODEL"),
    ("requests", "REQUESTS"),
    ("errors", "ERRORS"),
    ("limited", "429s"),
    ("prompt", "PROMPT"),
    ("generated", "GENERATED"),
    ("busy", "BUSY"),
)
WAITING_COLUMNS = (("key", "KEY"), ("model", "MODEL"), ("waiting", "WAITING"))
SINCE = "24h"


def usage_rows(usage: list[JSON]) -> list[tuple[str, tuple[str, ...]]]:
    return [(f"{row['key']}\t{row['model']}", tuple(usage_cells(row))) for row in usage]


def waiting_rows(running: list[Any]) -> list[tuple[str, tuple[str, ...]]]:
    rows: list[tuple[str, tuple[str, ...]]] = []
    for model in running:
        for key, count in sorted((model.get("queued_by_key") or {}).items()):
            cells = (str(key), str(model["name"]), str(count))
            rows.append((f"{key}\t{model['name']}", cells))
    return rows


class UsageScreen(PolledScreen):
    MODE = "usage"
    POLL_S = 2.0
    DEFAULT_CSS = """
    UsageScreen #usage { height: 2fr; border: round $primary; }
    UsageScreen #waiting { height: 1fr; border: round $primary; }
    UsageScreen #usage-note { height: auto; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.usage: list[JSON] = []
        self.note = ""

    def compose(self) -> ComposeResult:
        yield DataTable(id="usage", cursor_type="row", zebra_stripes=True)
        yield DataTable(id="waiting", cursor_type="none")
        yield Static(id="usage-note")
        yield from self.frame()

    def on_mount(self) -> None:
        set_columns(self.query_one("#usage", DataTable), USAGE_COLUMNS)
        set_columns(self.query_one("#waiting", DataTable), WAITING_COLUMNS)
        set_titles(self, usage=f"Usage by key (last {SINCE})", waiting="Waiting now (fair share)")
        super().on_mount()
        self.poll()

    def render_state(self, state: MonitorState, changed: set[str]) -> None:
        sync_table(self.query_one("#waiting", DataTable), waiting_rows(list(state.running)))
        if self.poll_due():
            self.poll()

    async def fetch(self) -> None:
        answer = await self.lsapp.source.usage(SINCE)
        self.usage = list(answer.get("usage") or [])
        self.note = str(answer.get("notice") or "")

    def fetch_failed(self, message: str) -> None:
        self.note = message

    def show_polled(self) -> None:
        self.show_usage()

    def show_usage(self) -> None:
        sync_table(self.query_one("#usage", DataTable), usage_rows(self.usage))
        note = self.note or ("" if self.usage else "no usage yet")
        set_text(self.query_one("#usage-note", Static), Text(note, style="dim"))
