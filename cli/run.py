"""`localserve run MODEL [PROMPT]`: one streamed answer, or the interactive session."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer

from localserve.config import parse_duration
from localserve.errors import ConfigError

# isort: split
from localserve.cli import repl
from localserve.cli.chat import (
    call_pulling,
    load_model,
    print_timings,
    stdout_write,
    stream_chat,
)
from localserve.cli.common import complete_model_name, get_settings, need_daemon
from localserve.cli.errors import ExitCode, cli_errors, fail


def parse_format(value: str | None) -> str | dict[str, Any] | None:
    """`--format`: "json", a JSON schema object, or nothing; exit 2 for anything else."""
    if value is None or value == "":
        return None
    if value == "json":
        return "json"
    try:
        schema = json.loads(value)
    except ValueError:
        schema = None
    if not isinstance(schema, dict):
        fail(f'invalid --format {value!r}: use "json" or a JSON schema object', ExitCode.USAGE)
    return schema


def run(
    model: Annotated[
        str,
        typer.Argument(help="Model name, e.g. smollm2:135m.", autocompletion=complete_model_name),
    ],
    prompt: Annotated[
        list[str] | None,
        typer.Argument(help="The prompt; read from stdin when stdin is not a terminal."),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Print timings (tokens/s) to stderr.")
    ] = False,
    format_: Annotated[
        str | None, typer.Option("--format", help='Answer format: "json" or a JSON schema.')
    ] = None,
    keepalive: Annotated[
        str | None,
        typer.Option("--keepalive", help='Keep the model loaded this long ("5m", "0", "-1").'),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="A system message.")] = None,
    think: Annotated[
        bool | None,
        typer.Option("--think/--no-think", help="Let a thinking model reason first (or not)."),
    ] = None,
    hide_thinking: Annotated[
        bool, typer.Option("--hidethinking", help="Do not print the model's reasoning.")
    ] = False,
) -> None:
    """Chat with a model: one answer for a prompt, or an interactive session."""
    fmt = parse_format(format_)
    if keepalive is not None:
        try:
            parse_duration(keepalive, 0.0)
        except ConfigError as exc:
            fail(f"invalid --keepalive: {exc}", ExitCode.USAGE)
    parts = [" ".join(prompt)] if prompt else []
    interactive = not parts and sys.stdin.isatty()
    if not parts and not interactive:
        parts = [sys.stdin.read()]
    elif parts and not sys.stdin.isatty():
        parts.insert(0, sys.stdin.read())
    text = " ".join(p for p in parts if p.strip())

    settings = get_settings()
    need_daemon(settings)
    conversation = repl.Conversation(system=system, verbose=verbose, format=fmt)
    if interactive:
        repl.run_repl(settings, model, conversation, keepalive)
        return
    with cli_errors(model):
        if not text.strip():
            call_pulling(
                settings, model, lambda: asyncio.run(load_model(settings, model, keepalive))
            )
            return
        answer, final = call_pulling(
            settings,
            model,
            lambda: asyncio.run(
                stream_chat(
                    settings,
                    model,
                    conversation.chat_messages(text),
                    options=None,
                    format=fmt,
                    keep_alive=keepalive,
                    write=stdout_write,
                    think=think,
                    hide_thinking=hide_thinking,
                )
            ),
        )
    if not answer.endswith("\n"):
        stdout_write("\n")
    if verbose:
        print_timings(final)
