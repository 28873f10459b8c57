"""The usage screen (key 6): per API key and model, requests, errors, 429s, prompt and
generated tokens and runner busy time (`/api/usage`, the last 24 hours), and the requests
each key has waiting now, per model (`/api/ps` `queued_by_key`, fair share).

The screen reads `/api/usage` itself while it is shown (every refresh tick, at most every
two seconds); the waiting counts come from the app's `/api/ps` state.
"""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from localserve.client.http import ClientError, DaemonUnreachableError
from localserve.tui.screens.base import MonitorScreen, set_columns, set_text, set_titles
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
POLL_S = 2.0
SINCE = "24h"


def usage_rows(usage: list[JSON]) -> list[tuple[str, tuple[str, ...]]]:
    return [
        (
            f"{row['key']}\t{row['model']}",
            (
                str(row["key"]),
                str(row["model"]),
                str(row["requests"]),
                str(row["errors"]),
                str(row["rate_limited"]),
                str(row["prompt_tokens"]),
                str(row["generated_tokens"]),
                f"{float(row['busy_seconds']):.1f}s",
            ),
        )
        for row in usage
    ]


def waiting_rows(running: list[Any]) -> list[tuple[str, tuple[str, ...]]]:
    rows: list[tuple[str, tuple[str, ...]]] = []
    for model in running:
        for key, count in sorted((model.get("queued_by_key") or {}).items()):
            cells = (str(key), str(model["name"]), str(count))
            rows.append((f"{key}\t{model['name']}", cells))
    return rows


class UsageScreen(MonitorScreen):
    MODE = "usage"
    DEFAULT_CSS = """
    UsageScreen #usage { height: 2fr; border: round $primary; }
    UsageScreen #waiting { height: 1fr; border: round $primary; }
    UsageScreen #usage-note { height: auto; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.usage: list[JSON] = []
        self.note = ""
        self._last_poll = 0.0
        self._polling = False

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
        if time.monotonic() - self._last_poll >= max(POLL_S, self.lsapp.refresh_s):
            self.poll()

    @work(group="usage-poll", exclusive=True)
    async def poll(self) -> None:
        if self._polling:
            return
        self._polling = True
        self._last_poll = time.monotonic()
        try:
            answer = await self.lsapp.source.usage(SINCE)
            self.usage = list(answer.get("usage") or [])
            self.note = str(answer.get("notice") or "")
        except DaemonUnreachableError as exc:
            self.lsapp.connection_lost(str(exc))
            return
        except ClientError as exc:
            self.note = str(exc)
        finally:
            self._polling = False
        self.show_usage()

    def show_usage(self) -> None:
        sync_table(self.query_one("#usage", DataTable), usage_rows(self.usage))
        note = self.note or ("" if self.usage else "no usage yet")
        set_text(self.query_one("#usage-note", Static), Text(note, style="dim"))
