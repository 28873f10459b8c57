"""The chat screen: pick a model, type, watch the reply stream with TTFT and tok/s."""

from __future__ import annotations

import contextlib
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.css.query import NoMatches
from textual.widgets import Input, Select, Static

from localserve.client.display import per_second
from localserve.client.http import APIError, ClientError, DaemonUnreachableError
from localserve.tui.format import ms_text
from localserve.tui.screens.base import JSON, MonitorScreen
from localserve.tui.state import MonitorState


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
        rate = per_second(self._tokens - 1, decode) if self._tokens > 1 else 0.0
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
        """Stop the streaming reply; when none streams, leave the input (so that 1-6
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
