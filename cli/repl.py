"""The interactive `localserve run MODEL` session: parsing (pure) and the input loop.

Commands, as in Ollama:

    /set parameter <name> <value>   set a sampling option (temperature, num_ctx, stop, ...)
    /set system <text>              set the system message
    /set verbose | /set quiet       show or hide the timing lines after each answer
    /set format json | /set noformat
    /show info | parameters | system | template
    /clear                          forget the conversation (keeps the system message)
    /bye                            leave (Ctrl-D does too)
    /? or /help                     help

Input that starts with triple quotes (\"\"\") continues over lines until a line that ends
with them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from localserve.client.display import parameters_text, render_show
from localserve.client.http import ClientError
from localserve.config import Settings

# isort: split
from localserve.cli import render
from localserve.cli.chat import (
    call_pulling,
    load_with_spinner,
    print_timings,
    show_model,
    stdout_write,
    stream_chat,
)
from localserve.cli.errors import ReplError, cli_errors, error_message

__all__ = [
    "HELP_TEXT",
    "Command",
    "Conversation",
    "ReplError",
    "parse_command",
    "parse_parameter",
    "read_message",
    "readline_history",
    "run_repl",
]

MULTILINE = '"""'
HISTORY_FILE_NAME = "history"
HISTORY_LENGTH = 1000

# Option name -> its type; `stop` takes one or more strings and accumulates.
PARAMETER_TYPES: dict[str, type] = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "seed": int,
    "num_predict": int,
    "num_ctx": int,
    "repeat_penalty": float,
    "repeat_last_n": int,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": str,
}

HELP_TEXT = """Available commands:
  /set parameter <name> <value>   Set a parameter (e.g. temperature 0.7, num_ctx 4096, stop <s>)
  /set system <text>              Set the system message
  /set verbose | quiet            Show or hide timings after each answer
  /set format json | noformat     Ask for JSON answers, or plain text
  /show info                      Show details for this model
  /show parameters | system | template
  /clear                          Clear the conversation
  /bye                            Exit
  /?, /help                       Help for a command

Use \"\"\" to begin a multi-line message."""

SET_PARAMETER_HELP = "Parameters: " + ", ".join(PARAMETER_TYPES)


@dataclass(frozen=True)
class Command:
    """One parsed REPL line. `kind` is "message" for text to send to the model."""

    kind: str
    args: tuple[str, ...] = ()
    text: str = ""


def parse_parameter(name: str, values: list[str]) -> tuple[str, Any]:
    """Validate `/set parameter` input into (option name, typed value)."""
    kind = PARAMETER_TYPES.get(name)
    if kind is None:
        raise ReplError(f"unknown parameter '{name}'. {SET_PARAMETER_HELP}")
    if not values:
        raise ReplError(f"usage: /set parameter {name} <value>")
    if name == "stop":
        return name, list(values)
    if len(values) != 1:
        raise ReplError(f"parameter '{name}' takes one value")
    try:
        return name, kind(values[0])
    except ValueError as exc:
        raise ReplError(f"invalid value for {name}: {values[0]!r} ({kind.__name__})") from exc


def parse_command(line: str) -> Command:
    """Parse one complete input (already joined when multi-line)."""
    stripped = line.strip()
    if not stripped.startswith("/") or stripped.startswith("//"):
        text = stripped[1:] if stripped.startswith("//") else line
        return Command("message", text=text)
    words = stripped.split()
    head = words[0].lower()
    rest = words[1:]
    if head in ("/bye", "/exit", "/quit"):
        return Command("bye")
    if head in ("/?", "/help"):
        return Command("help", tuple(rest))
    if head == "/clear":
        return Command("clear")
    if head == "/show":
        what = rest[0].lower() if rest else "info"
        if what not in ("info", "parameters", "system", "template", "modelfile"):
            raise ReplError(f"unknown /show target '{what}': info, parameters, system, template")
        return Command("show", (what,))
    if head == "/set":
        if not rest:
            raise ReplError("usage: /set parameter <name> <value> | /set system <text> | ...")
        what = rest[0].lower()
        if what == "parameter":
            if len(rest) < 2:
                raise ReplError(f"usage: /set parameter <name> <value>. {SET_PARAMETER_HELP}")
            return Command("set_parameter", tuple(rest[1:]))
        if what == "system":
            # Keep the user's spacing: everything after "/set system".
            text = stripped.split(None, 2)[2] if len(rest) > 1 else ""
            return Command("set_system", text=text.strip().strip('"'))
        if what in ("verbose", "quiet", "noformat"):
            return Command("set_" + what)
        if what == "format":
            if rest[1:] != ["json"]:
                raise ReplError("usage: /set format json")
            return Command("set_format", ("json",))
        raise ReplError(f"unknown /set target '{rest[0]}'")
    raise ReplError(f"unknown command '{words[0]}'. Type /? for help")


@dataclass
class Conversation:
    """The state of one REPL session."""

    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    verbose: bool = False
    format: str | dict[str, Any] | None = None  # "json" or a JSON schema

    def chat_messages(self, user_text: str) -> list[dict[str, Any]]:
        """The messages to send for a new user turn (system first, when set)."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, *self.messages, {"role": "user", "content": user_text}]

    def record(self, user_text: str, answer: str) -> None:
        self.messages.append({"role": "user", "content": user_text})
        self.messages.append({"role": "assistant", "content": answer})

    def clear(self) -> None:
        self.messages.clear()

    def set_parameter(self, args: tuple[str, ...]) -> str:
        name, value = parse_parameter(args[0], list(args[1:]))
        if name == "stop":
            self.options["stop"] = [*self.options.get("stop", []), *value]
        else:
            self.options[name] = value
        return f"Set parameter '{name}' to '{', '.join(map(str, args[1:]))}'"


def read_message(
    read_line: Callable[[str], str], prompt: str = ">>> ", continuation: str = "... "
) -> str:
    """Read one message: a line, or triple-quoted lines joined by newlines.

    `read_line` is `input`-like (raises EOFError / KeyboardInterrupt)."""
    line = read_line(prompt)
    if not line.lstrip().startswith(MULTILINE):
        return line
    body = line.lstrip()[len(MULTILINE) :]
    if body.rstrip().endswith(MULTILINE) and body.strip():
        return body.rstrip()[: -len(MULTILINE)]
    lines = [body] if body else []
    while True:
        line = read_line(continuation)
        if line.rstrip().endswith(MULTILINE):
            tail = line.rstrip()[: -len(MULTILINE)]
            if tail:
                lines.append(tail)
            return "\n".join(lines)
        lines.append(line)


@contextlib.contextmanager
def readline_history(state_dir: Path) -> Iterator[None]:
    """Line editing and a persistent history file (`<state_dir>/history`) when the
    platform has readline; a no-op otherwise."""
    try:
        import readline
    except ImportError:  # pragma: no cover - Windows without pyreadline
        yield
        return
    path = state_dir / HISTORY_FILE_NAME
    with contextlib.suppress(OSError):
        state_dir.mkdir(parents=True, exist_ok=True)
        readline.read_history_file(str(path))
    readline.set_history_length(HISTORY_LENGTH)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            readline.write_history_file(str(path))


# ---- the session -----------------------------------------------------------------------


def run_repl(
    settings: Settings,
    model: str,
    conversation: Conversation,
    keep_alive: str | None,
) -> None:
    """The interactive session: load the model, then read and carry out messages and
    commands until /bye or Ctrl-D."""
    with cli_errors(model):
        call_pulling(settings, model, lambda: load_with_spinner(settings, model, keep_alive))
    with readline_history(settings.state_dir):
        while True:
            try:
                message = read_message(input)
            except EOFError:
                typer.echo()
                return
            except KeyboardInterrupt:
                typer.echo("\nUse Ctrl + d or /bye to exit.")
                continue
            if not message.strip():
                continue
            try:
                command = parse_command(message)
                if command.kind == "bye":
                    return
                _step(settings, model, conversation, command, keep_alive)
            except ReplError as exc:
                typer.echo(f"Error: {exc}")
            except KeyboardInterrupt:
                typer.echo()
            except ClientError as exc:
                typer.echo(f"Error: {error_message(exc, model)}", err=True)


def _step(
    settings: Settings,
    model: str,
    conversation: Conversation,
    command: Command,
    keep_alive: str | None,
) -> None:
    kind = command.kind
    if kind == "help":
        typer.echo(HELP_TEXT)
    elif kind == "clear":
        conversation.clear()
        typer.echo("Cleared session context")
    elif kind == "set_parameter":
        typer.echo(conversation.set_parameter(command.args))
    elif kind == "set_system":
        conversation.system = command.text or None
        typer.echo("Set system message." if command.text else "Cleared system message.")
    elif kind == "set_verbose":
        conversation.verbose = True
        typer.echo("Set 'verbose' mode.")
    elif kind == "set_quiet":
        conversation.verbose = False
        typer.echo("Set 'quiet' mode.")
    elif kind == "set_format":
        conversation.format = "json"
        typer.echo("Set format to 'json' mode.")
    elif kind == "set_noformat":
        conversation.format = None
        typer.echo("Disabled format.")
    elif kind == "show":
        _show(settings, model, conversation, command.args[0])
    elif kind == "message":
        answer, final = asyncio.run(
            stream_chat(
                settings,
                model,
                conversation.chat_messages(command.text),
                options=conversation.options,
                format=conversation.format,
                keep_alive=keep_alive,
                write=stdout_write,
            )
        )
        stdout_write("\n" if answer.endswith("\n") else "\n\n")
        conversation.record(command.text, answer)
        if conversation.verbose:
            print_timings(final)


def _show(settings: Settings, model: str, conversation: Conversation, what: str) -> None:
    data = asyncio.run(show_model(settings, model))
    if what == "info":
        typer.echo(render_show(data))
    elif what == "parameters":
        text = parameters_text(data.get("parameters"))
        session = parameters_text(conversation.options)
        typer.echo("Model defined parameters:\n" + (text or "No parameters were specified."))
        if session:
            typer.echo("User defined parameters:\n" + session)
    elif what == "system":
        typer.echo(conversation.system or data.get("system") or "No system message was specified.")
    elif what == "template":
        typer.echo(data.get("template") or "No prompt template was specified.")
    elif what == "modelfile":
        typer.echo(render.modelfile_text(model, data))
