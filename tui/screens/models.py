"""The models screen: installed models with filter, sort and a details pane; pull, load,
unload, delete and chat."""

from __future__ import annotations

import contextlib
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.css.query import NoMatches
from textual.widgets import DataTable, Input, Static

from localserve.api.payloads import ShowResponse
from localserve.client.display import human_bytes, render_show, short_id
from localserve.client.http import ClientError, DaemonUnreachableError
from localserve.tui.format import modified_column
from localserve.tui.screens.base import (
    MonitorScreen,
    pulls_text,
    set_columns,
    set_text,
    set_titles,
)
from localserve.tui.screens.dialogs import ConfirmScreen, PullScreen
from localserve.tui.state import MonitorState
from localserve.tui.widgets import highlighted_key, sync_table

INSTALLED_COLUMNS = (
    ("loaded", " "),
    ("name", "NAME"),
    ("id", "ID"),
    ("quant", "QUANT"),
    ("size", "SIZE"),
    ("modified", "MODIFIED"),
)
SORTS = ("name", "size", "modified")


class ModelsScreen(MonitorScreen):
    MODE = "models"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("s", "sort", "Sort"),
        Binding("p", "pull", "Pull"),
        Binding("l", "load", "Load"),
        Binding("U", "unload", "Unload"),
        Binding("D", "delete", "Delete"),
        Binding("c", "chat", "Chat"),
    ]
    DEFAULT_CSS = """
    ModelsScreen #filter { display: none; height: 3; }
    ModelsScreen #filter.-shown { display: block; }
    ModelsScreen #models-body { height: 1fr; }
    ModelsScreen #installed { width: 1fr; height: 100%; border: round $primary; }
    ModelsScreen #details-box { width: 40; height: 100%; border: round $primary; padding: 0 1; }
    ModelsScreen #model-pulls { height: auto; max-height: 8; border: round $primary; padding: 0 1; }
    ModelsScreen #model-pulls.-empty { display: none; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.sort = "name"
        self.filter_text = ""
        self._details: dict[str, ShowResponse | str] = {}  # /api/show, or why it failed
        self._details_for: str | None = None
        self._rendered_installed = -1

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter models (Enter to keep, Esc to clear)", id="filter")
        with Horizontal(id="models-body"):
            yield DataTable(id="installed", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="details-box"):
                yield Static("select a model", id="details")
        yield Static(id="model-pulls")
        yield from self.frame()

    def on_mount(self) -> None:
        table = self.query_one("#installed", DataTable)
        set_columns(table, INSTALLED_COLUMNS)
        set_titles(self, installed="Installed models", details_box="Details", model_pulls="Pulls")
        super().on_mount()
        table.focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in ("pull", "delete", "unload") and self.lsapp.readonly)

    def render_state(self, state: MonitorState, changed: set[str]) -> None:
        if changed & {"pulls", "system"}:
            pulls = self.query_one("#model-pulls", Static)
            active = state.active_pulls()
            pulls.set_class(not active, "-empty")
            if active:
                set_text(pulls, pulls_text(state, width=40))
        if not changed & {"installed", "running"}:
            return
        loaded = state.loaded_names()
        now = state.clock()
        models = [
            m for m in state.installed if self.filter_text.lower() in str(m.get("name", "")).lower()
        ]
        if self.sort == "size":
            models.sort(key=lambda m: (-int(m.get("size") or 0), str(m.get("name"))))
        elif self.sort == "modified":
            models.sort(key=lambda m: str(m.get("modified_at") or ""), reverse=True)
        else:
            models.sort(key=lambda m: str(m.get("name")))
        rows = []
        for model in models:
            name = str(model.get("name") or model.get("model"))
            details = model.get("details") or {}
            rows.append(
                (
                    name,
                    [
                        Text("●", style="green") if name in loaded else "",
                        name,
                        short_id(model.get("digest")),
                        str(details.get("quantization_level", "")),
                        human_bytes(int(model.get("size") or 0)),
                        modified_column(model.get("modified_at"), now),
                    ],
                )
            )
        table = self.query_one("#installed", DataTable)
        sync_table(table, rows)
        shown = f"{len(rows)} of {len(state.installed)}" if self.filter_text else f"{len(rows)}"
        filtered = f"  filter: {self.filter_text!r}" if self.filter_text else ""
        table.border_subtitle = f"{shown} models · sort: {self.sort} (s){filtered}"
        if state.installed_version != self._rendered_installed:
            self._rendered_installed = state.installed_version
            self._details.clear()
        self._show_details(highlighted_key(table))

    # ---- details ----------------------------------------------------------------------

    @on(DataTable.RowHighlighted, "#installed")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_details(str(event.row_key.value) if event.row_key.value else None)

    def _show_details(self, name: str | None) -> None:
        if name == self._details_for and (name is None or name in self._details):
            return
        self._details_for = name
        details = self.query_one("#details", Static)
        if name is None:
            details.update(Text("no model selected", style="dim"))
            return
        if name in self._details:
            details.update(self._details_text(name, self._details[name]))
            return
        details.update(Text(f"{name}\n\nloading details...", style="dim"))
        self._fetch_details(name)

    @work(group="details", exclusive=True)
    async def _fetch_details(self, name: str) -> None:
        data: ShowResponse | str
        try:
            data = await self.lsapp.source.show(name)
        except DaemonUnreachableError as exc:
            self.lsapp.connection_lost(str(exc))
            return
        except ClientError as exc:
            data = str(exc)
        self._details[name] = data
        if self._details_for == name:
            with contextlib.suppress(NoMatches):  # the screen went away meanwhile
                self.query_one("#details", Static).update(self._details_text(name, data))

    def _details_text(self, name: str, data: ShowResponse | str) -> Text:
        text = Text(name + "\n", style="bold")
        if isinstance(data, str):  # the error
            text.append(data, style="red")
            return text
        loaded = name in self.lsapp.state.loaded_names()
        text.append("loaded\n" if loaded else "not loaded\n", style="green" if loaded else "dim")
        text.append(render_show(data, max_block_lines=6))
        return text

    # ---- actions ----------------------------------------------------------------------

    def _selected(self) -> str | None:
        name = highlighted_key(self.query_one("#installed", DataTable))
        if name is None:
            self.notify("no model selected", severity="warning")
        return name

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("-shown")
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("-shown")
        self.filter_text = ""
        self.query_one("#installed", DataTable).focus()
        self.refresh_from_state(force=True)

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.refresh_from_state(force=True)

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            self.query_one("#filter", Input).remove_class("-shown")
        self.query_one("#installed", DataTable).focus()

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.refresh_from_state(force=True)

    def action_pull(self) -> None:
        self.app.push_screen(PullScreen(), self._pull_chosen)

    def _pull_chosen(self, name: str | None) -> None:
        if name:
            self.lsapp.start_pull(name)

    def action_delete(self) -> None:
        name = self._selected()
        if name is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.lsapp.delete_model(name)

        self.app.push_screen(
            ConfirmScreen(f"Delete {name}?", "This removes it from the store (its blobs too)."),
            answered,
        )

    def action_load(self) -> None:
        name = self._selected()
        if name is not None:
            self.lsapp.load_model(name)

    def action_unload(self) -> None:
        name = self._selected()
        if name is not None:
            self.lsapp.unload_model(name)

    def action_chat(self) -> None:
        name = self._selected()
        if name is not None:
            self.lsapp.open_chat(name)

    @on(DataTable.RowSelected, "#installed")
    def _selected_row(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.lsapp.open_chat(str(event.row_key.value))
