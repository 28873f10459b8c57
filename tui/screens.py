"""The TUI's screens: dashboard, models, chat and logs (one per mode), and the modal ones
(help, confirm, pull, daemon not reachable).

The mode screens re-render from `MonitorState` on the app's refresh tick, only when the
state's version moved since their last render (so bursts of events coalesce into one
redraw). They reach the daemon only through the app's `DataSource`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, cast

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Digits, Footer, Input, RichLog, Select, Static

from localserve.cli.render import render_show
from localserve.client import APIError, ClientError, DaemonUnreachableError
from localserve.tui.format import (
    clock_text,
    gauge,
    human_bytes,
    modified_column,
    ms_text,
    processor_column,
    rate_text,
    short_id,
    sparkline,
    text_bar,
    until_text,
)
from localserve.tui.state import SECTIONS, MonitorState
from localserve.tui.widgets import TooSmall, TopBar, highlighted_key, sync_table

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


# ---- dashboard ------------------------------------------------------------------------------

RATE_DIGITS = 5  # the big tok/s readout: "  9.5", "105.3"
RUNNING_COLUMNS = (
    ("name", "NAME"),
    ("size", "SIZE"),
    ("vram", "VRAM"),
    ("processor", "PROCESSOR"),
    ("context", "CONTEXT"),
    ("until", "UNTIL"),
    ("queue", "QUEUE"),
    ("active", "ACTIVE"),
    ("rate", "TOK/S"),
    ("history", "TOK/S (60 s)"),
)
RECENT_COLUMNS = (
    ("time", "TIME"),
    ("model", "MODEL"),
    ("api", "API"),
    ("in", "IN"),
    ("out", "OUT"),
    ("ttft", "TTFT"),
    ("rate", "TOK/S"),
    ("status", "STATUS"),
)


class DashboardScreen(MonitorScreen):
    MODE = "dashboard"
    DEFAULT_CSS = """
    DashboardScreen #top { height: auto; }
    DashboardScreen #busiest-box {
        width: 34; height: auto; border: round $primary; padding: 0 1;
    }
    DashboardScreen #busiest-rate { width: auto; }
    DashboardScreen #gauges { width: 1fr; height: auto; min-height: 6; border: round $primary; }
    DashboardScreen #running { height: 1fr; min-height: 4; border: round $primary; }
    DashboardScreen #bottom { height: 1fr; min-height: 5; }
    DashboardScreen #recent { width: 2fr; height: 100%; border: round $primary; }
    DashboardScreen #pulls { width: 1fr; height: 100%; border: round $primary; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal(id="top"):
            with Vertical(id="busiest-box"):
                yield Static(id="busiest-label")
                yield Digits(f"{0:{RATE_DIGITS}.1f}", id="busiest-rate")
            yield Static(id="gauges")
        yield DataTable(id="running", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="bottom"):
            yield DataTable(id="recent", cursor_type="row", show_cursor=False)
            yield Static(id="pulls")
        yield from self.frame()

    def on_mount(self) -> None:
        set_columns(self.query_one("#running", DataTable), RUNNING_COLUMNS)
        set_columns(self.query_one("#recent", DataTable), RECENT_COLUMNS)
        set_titles(
            self,
            running="Running models",
            recent="Recent requests",
            busiest_box="Busiest",
            gauges="System",
            pulls="Pulls",
        )
        super().on_mount()

    def render_state(self, state: MonitorState, changed: set[str]) -> None:
        # Live token rates (~4 a second while decoding) redraw only the big readout; the
        # table's TOK/S column and sparklines follow the system samples (once a second).
        if changed & {"rates", "running"}:
            busiest = state.busiest()
            label = self.query_one("#busiest-label", Static)
            digits = self.query_one("#busiest-rate", Digits)
            if busiest is None:
                set_text(label, Text("idle: no request decoding", style="dim"))
                value = f"{0:{RATE_DIGITS}.1f}"
            else:
                busy_model, rate = busiest
                set_text(label, Text.assemble(("tok/s  ", "dim"), (busy_model, "bold")))
                # A fixed width (spaces are as wide as digits): a wider or narrower number
                # would cost a layout pass of the whole screen, four times a second.
                value = f"{rate:{RATE_DIGITS}.1f}"
            if digits.value != value:
                digits.update(value)
        if "system" in changed:
            set_text(self.query_one("#gauges", Static), self._gauges(state))
        if changed & {"running", "system", "connection"} or (
            "rates" in changed and not state.active  # a request ended: rate back to 0
        ):
            self._render_running(state)
        if changed & {"recent", "connection"}:
            self._render_recent(state)
        if changed & {"pulls", "system"}:  # system: a finished pull leaves after a while
            set_text(self.query_one("#pulls", Static), pulls_text(state, width=20))

    def _render_running(self, state: MonitorState) -> None:
        now = state.clock()
        rows = []
        for model in state.running:
            name = str(model.get("name") or model.get("model"))
            size = int(model.get("size") or 0)
            vram = int(model.get("size_vram") or 0)
            rate = state.current_rate(name)
            history: Iterable[float] = state.rate_history.get(name, ())
            rows.append(
                (
                    name,
                    [
                        name,
                        human_bytes(size),
                        human_bytes(vram) if vram else "-",
                        processor_column(size, vram),
                        str(model.get("context_length") or ""),
                        (
                            until_text(model, now)
                            if model.get("state") != "loading"
                            else f"loading {state.load_progress(model):.0%}"
                        ),
                        str(model.get("queue_depth", 0)),
                        str(model.get("in_flight", 0)),
                        Text(rate_text(rate), style="bold green" if rate else "dim"),
                        Text(sparkline(history, 24), style="green"),
                    ],
                )
            )
        running = self.query_one("#running", DataTable)
        sync_table(running, rows)
        subtitle = f"{len(rows)} loaded"
        if running.border_subtitle != subtitle:
            running.border_subtitle = subtitle

    def _render_recent(self, state: MonitorState) -> None:
        recent_rows = [
            (
                f"{record.time}-{index}",
                [
                    clock_text(record.time),
                    record.model,
                    record.endpoint,
                    str(record.prompt_tokens),
                    str(record.eval_count),
                    ms_text(record.ttft_ms),
                    rate_text(record.tokens_per_second),
                    Text(record.status, style="green" if record.status == "ok" else "red"),
                ],
            )
            for index, record in enumerate(state.recent)
        ]
        sync_table(self.query_one("#recent", DataTable), recent_rows)

    def _gauges(self, state: MonitorState) -> Text:
        sample = state.system
        if sample is None:
            return Text("waiting for the first system sample...", style="dim")
        lines = Text()
        total = float(sample.get("ram_total") or 0)
        used = total - float(sample.get("ram_available") or 0)
        lines.append_text(gauge("RAM", used, total, state.ram_history))
        gpus = sample.get("gpus") or []
        for gpu in gpus:
            lines.append("\n")
            gpu_history: Iterable[float] = state.gpu_history.get(int(gpu["index"]), ())
            lines.append_text(
                gauge(
                    f"GPU{gpu['index']}",
                    float(gpu.get("vram_used") or 0),
                    float(gpu.get("vram_total") or 0),
                    gpu_history,
                )
            )
            lines.append(f" {gpu.get('utilization', 0)}% util", style="dim")
        if not gpus:
            lines.append("\nGPU   none (no NVIDIA driver or NVML): running on CPU", style="dim")
        runners = sample.get("runners") or []
        if runners:
            lines.append("\n")
            lines.append(
                "  ".join(
                    f"{r['model']} {human_bytes(r.get('rss', 0))}"
                    + (f" +{human_bytes(r['vram'])} VRAM" if r.get("vram") else "")
                    for r in runners
                ),
                style="dim",
            )
        return lines


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


# ---- models ---------------------------------------------------------------------------------

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
        self._details: dict[str, JSON] = {}
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
        try:
            data = await self.lsapp.source.show(name)
        except DaemonUnreachableError as exc:
            self.lsapp.connection_lost(str(exc))
            return
        except ClientError as exc:
            data = {"error": str(exc)}
        self._details[name] = data
        if self._details_for == name:
            with contextlib.suppress(NoMatches):  # the screen went away meanwhile
                self.query_one("#details", Static).update(self._details_text(name, data))

    def _details_text(self, name: str, data: JSON) -> Text:
        text = Text(name + "\n", style="bold")
        if "error" in data:
            text.append(str(data["error"]), style="red")
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


# ---- chat -----------------------------------------------------------------------------------


class ChatScreen(MonitorScreen):
    MODE = "chat"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "stop", "Stop / leave input"),
        Binding("i", "type", "Type", show=False),
        Binding("ctrl+l", "clear", "Clear"),
    ]
    DEFAULT_CSS = """
    ChatScreen #chat-bar { height: 3; }
    ChatScreen #chat-model { width: 40; }
    ChatScreen #chat-stats { width: 1fr; height: 3; content-align: left middle; padding: 0 1; }
    ChatScreen #transcript { height: 1fr; border: round $primary; padding: 0 1; }
    ChatScreen .user { color: $accent; text-style: bold; margin-top: 1; }
    ChatScreen .assistant { margin-bottom: 0; }
    ChatScreen .error { color: $error; }
    ChatScreen #prompt { dock: bottom; margin-bottom: 1; }
    """
    STREAM_REDRAW_S = 0.05  # coalesce token updates: at most 20 redraws a second

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[JSON] = []
        self.model: str | None = None
        self._rendered_installed = -1
        self._names: list[str] = []
        self._reply = ""
        self._reply_widget: Static | None = None
        self._dirty = False
        self._started = 0.0
        self._first = 0.0
        self._tokens = 0
        self._stats = Text("pick a model, type a prompt, Enter", style="dim")

    def compose(self) -> ComposeResult:
        with Horizontal(id="chat-bar"):
            yield Select[str]([], prompt="model", id="chat-model")
            yield Static(id="chat-stats")
        yield VerticalScroll(id="transcript")
        yield Input(
            placeholder="Send a message (Enter) · Esc stops / leaves the input · Ctrl+L clears",
            id="prompt",
        )
        yield from self.frame()

    def on_mount(self) -> None:
        self.query_one("#transcript").border_title = "Chat"
        super().on_mount()
        self.set_interval(self.STREAM_REDRAW_S, self._flush)
        self.query_one("#prompt", Input).focus()

    def render_state(self, state: MonitorState, changed: set[str]) -> None:
        if self.lsapp.pending_chat_model:
            self.model, self.lsapp.pending_chat_model = self.lsapp.pending_chat_model, None
            self._rendered_installed = -1  # select it below
        if state.installed_version != self._rendered_installed:
            self._rendered_installed = state.installed_version
            self._names = names = sorted(str(m.get("name")) for m in state.installed)
            select = self.query_one("#chat-model", Select)
            current = self.model
            select.set_options([(name, name) for name in names])
            if current in names:
                select.value = current
        self.query_one("#chat-stats", Static).update(self._stats)

    def choose(self, model: str) -> None:
        self.model = model
        if model in self._names:
            self.query_one("#chat-model", Select).value = model
        self.query_one("#prompt", Input).focus()

    @on(Select.Changed, "#chat-model")
    def _model_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self.model = event.value

    @on(Input.Submitted, "#prompt")
    def _submit(self, event: Input.Submitted) -> None:
        prompt = event.value.strip()
        if not prompt:
            return
        if self.model is None:
            self.notify("pick a model first", severity="warning")
            return
        if self._reply_widget is not None:
            self.notify("a reply is still streaming (Esc stops it)", severity="warning")
            return
        event.input.value = ""
        self.messages.append({"role": "user", "content": prompt})
        transcript = self.query_one("#transcript", VerticalScroll)
        transcript.mount(Static(Text(f"> {prompt}"), classes="user"))
        self._reply_widget = Static("", classes="assistant")
        transcript.mount(self._reply_widget)
        transcript.scroll_end(animate=False)
        self._reply = ""
        self._generate(self.model, list(self.messages))

    @work(group="chat", exclusive=True)
    async def _generate(self, model: str, messages: list[JSON]) -> None:
        self._started = self.lsapp.timer()
        self._first = 0.0
        self._tokens = 0
        self._stats = Text(f"{model}: waiting for the first token...", style="dim")
        self._dirty = True
        failed: str | None = None
        try:
            async for item in self.lsapp.source.chat(model, messages):
                if item.get("done"):
                    break
                piece = str((item.get("message") or {}).get("content", ""))
                if not self._first:
                    self._first = self.lsapp.timer()
                self._tokens += 1
                self._reply += piece
                self._update_stats(model)
                self._dirty = True
        except DaemonUnreachableError as exc:
            failed = str(exc)
            self.lsapp.connection_lost(str(exc))
        except (APIError, ClientError) as exc:
            failed = str(exc)
        finally:
            self._update_stats(model, final=True)
            if failed:
                self._reply += f"\n[error] {failed}"
            self.messages.append({"role": "assistant", "content": self._reply})
            self._flush(force=True)
            self._reply_widget = None

    def _update_stats(self, model: str, final: bool = False) -> None:
        now = self.lsapp.timer()
        ttft = (self._first - self._started) * 1000 if self._first else None
        decode = now - self._first if self._first else 0.0
        rate = (self._tokens - 1) / decode if self._tokens > 1 and decode > 0 else 0.0
        self._stats = Text.assemble(
            (f"{model}  ", "bold"),
            ("TTFT ", "dim"),
            ms_text(ttft),
            ("  tok/s ", "dim"),
            (f"{rate:.1f}", "bold green" if not final else "green"),
            ("  tokens ", "dim"),
            str(self._tokens),
            ("  (done)" if final else "", "dim"),
        )

    def _flush(self, force: bool = False) -> None:
        if not (self._dirty or force) or self._reply_widget is None:
            return
        self._dirty = False
        self._reply_widget.update(Text(self._reply))
        with contextlib.suppress(NoMatches):  # the app is closing while a reply streams
            self.query_one("#chat-stats", Static).update(self._stats)
            self.query_one("#transcript", VerticalScroll).scroll_end(animate=False)

    def action_stop(self) -> None:
        """Stop the streaming reply; when none streams, leave the input (so that 1-4
        and ? work again; `i` or a click returns to it)."""
        if self._reply_widget is not None:
            self.workers.cancel_group(self, "chat")
        else:
            self.set_focus(None)

    def action_type(self) -> None:
        self.query_one("#prompt", Input).focus()

    def action_clear(self) -> None:
        self.action_stop()
        self.messages.clear()
        self.query_one("#transcript", VerticalScroll).remove_children()


# ---- logs -----------------------------------------------------------------------------------


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


# ---- modal screens --------------------------------------------------------------------------


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,f1,q", "dismiss_help", "Close", show=False),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen #help { width: 72; height: auto; max-height: 90%; border: thick $primary;
                       background: $surface; padding: 1 2; }
    """

    def __init__(self, readonly: bool) -> None:
        super().__init__()
        self.readonly = readonly

    def compose(self) -> ComposeResult:
        yield Static(help_text(self.readonly), id="help")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


def help_text(readonly: bool) -> Text:
    sections: list[tuple[str, list[tuple[str, str]]]] = [
        (
            "Everywhere",
            [
                ("1 2 3 4", "dashboard, models, chat, logs (also F2-F5)"),
                ("? / F1", "this help"),
                ("Ctrl+P", "command palette (every action, by name)"),
                ("+ / -", "refresh faster / slower"),
                ("q", "quit"),
            ],
        ),
        (
            "Models",
            [
                ("/", "filter by name (Esc clears)"),
                ("s", "sort: name, size, modified"),
                ("l", "load the selected model"),
                ("c / Enter", "chat with it"),
            ]
            + (
                []
                if readonly
                else [
                    ("p", "pull a model"),
                    ("U", "unload it (capital: it stops the model)"),
                    ("D", "delete it from the store (asks first)"),
                ]
            ),
        ),
        (
            "Chat",
            [
                ("Enter", "send"),
                ("Esc", "stop the reply, or leave the input"),
                ("i", "back to the input"),
                ("Ctrl+L", "clear"),
            ],
        ),
        ("Logs", [("c", "clear the view")]),
    ]
    text = Text("localserve TUI\n", style="bold")
    if readonly:
        text.append("read-only: pull, unload and delete are hidden\n", style="yellow")
    for title, rows in sections:
        text.append(f"\n{title}\n", style="bold underline")
        for key, what in rows:
            text.append(f"  {key:<11}", style="bold cyan")
            text.append(f"{what}\n")
    text.append("\nEsc closes this help", style="dim")
    return text


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen #confirm { width: 60; height: auto; border: thick $error;
                             background: $surface; padding: 1 2; }
    """

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__()
        self.question = question
        self.detail = detail

    def compose(self) -> ComposeResult:
        text = Text(self.question + "\n", style="bold")
        if self.detail:
            text.append(self.detail + "\n", style="dim")
        text.append("\n[y] yes   [n] no", style="bold")
        yield Static(text, id="confirm")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class PullScreen(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    PullScreen { align: center middle; }
    PullScreen #pull-box { width: 70; height: auto; border: thick $primary;
                           background: $surface; padding: 1 2; }
    """

    def compose(self) -> ComposeResult:
        with Vertical(id="pull-box"):
            yield Static(
                Text.assemble(
                    ("Pull a model\n", "bold"),
                    ("smollm2:135m, hf.co/<org>/<repo>[:<quant>]; Enter pulls, Esc cancels", "dim"),
                )
            )
            yield Input(placeholder="model name", id="pull-name")

    def on_mount(self) -> None:
        self.query_one("#pull-name", Input).focus()

    @on(Input.Submitted, "#pull-name")
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


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
