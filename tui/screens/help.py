"""The help screen (`?` / F1): the keys of every screen."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import ModalScreen
from textual.widgets import Static


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
                ("1-6", "dashboard, models, chat, logs, routes, usage (F2-F7)"),
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
    if not readonly:
        sections.append(
            (
                "Routes",
                [
                    ("B", "roll the selected route back (asks first)"),
                    ("P", "pause or resume its rollout"),
                    ("A", "abort its rollout (asks first)"),
                ],
            )
        )
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
