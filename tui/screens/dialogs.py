"""Modal dialogs: confirm a destructive action, name a model to pull."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


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
