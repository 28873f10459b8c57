"""Talking to a model, shared by `run` and its REPL: stream a chat answer behind a spinner
that shows the daemon's load progress, load a model, and pull a missing Hugging Face
model first."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import typer

from localserve.api.payloads import ShowResponse
from localserve.client.http import ClientError, LocalserveClient, ModelNotFoundAPIError
from localserve.config import Settings
from localserve.errors import LocalserveError
from localserve.names import ModelName

# isort: split
from localserve.cli import render
from localserve.cli.common import make_client, spinner
from localserve.cli.progress import pull_with_progress

T = TypeVar("T")


@contextlib.asynccontextmanager
async def load_progress_shown(
    client: LocalserveClient, model: str, status: Any
) -> AsyncIterator[None]:
    """While the block runs, show the daemon's load progress for `model` on `status` (a
    rich Status, or None when there is no spinner)."""
    if status is None:
        yield
        return
    try:
        wanted: str | None = ModelName.parse(model).display()
    except LocalserveError:
        wanted = None  # the request will say what is wrong with the name

    async def watch() -> None:
        with contextlib.suppress(ClientError):
            async for event in client.events(["load_progress", "loaded"]):
                if wanted is not None and event.get("model") != wanted:
                    continue
                if event["type"] == "loaded":
                    status.update("")  # loaded: the plain spinner until the first token
                else:
                    progress = float(event.get("progress") or 0.0)
                    status.update(f"loading {model} {progress:.0%}")

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def stream_chat(
    settings: Settings,
    model: str,
    messages: list[dict[str, Any]],
    *,
    options: dict[str, Any] | None,
    format: str | dict[str, Any] | None,
    keep_alive: str | None,
    write: Callable[[str], None],
    think: bool | None = None,
    hide_thinking: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Stream one chat answer to `write`; return (answer, final chunk). A spinner runs on
    stderr (when it is a terminal) until the first token. A thinking model's reasoning is
    written first, between "Thinking..." and "...done thinking.", unless hidden."""
    answer: list[str] = []
    thinking = False
    final: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as spinning:
        status = spinning.enter_context(spinner())
        async with make_client(settings) as client:
            await spinning.enter_async_context(load_progress_shown(client, model, status))
            chunks: AsyncIterator[dict[str, Any]] = client.chat(
                model,
                messages,
                options=options or None,
                format=format,
                keep_alive=keep_alive,
                think=think,
            )
            async for chunk in chunks:
                message = chunk.get("message") or {}
                reasoning = str(message.get("thinking") or "")
                if reasoning and not hide_thinking:
                    await spinning.aclose()
                    if not thinking:
                        write("Thinking...\n")
                        thinking = True
                    write(reasoning)
                content = str(message.get("content") or "")
                if content and thinking:
                    write("\n...done thinking.\n\n")
                    thinking = False
                if content:
                    await spinning.aclose()  # first token: stop the spinner (no-op afterwards)
                    answer.append(content)
                    write(content)
                if chunk.get("done"):
                    final = chunk
    return "".join(answer), final


def stdout_write(text: str) -> None:
    """Write answer text to stdout at once (tokens appear as they arrive)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def print_timings(final: dict[str, Any]) -> None:
    """Ollama's `--verbose` timing lines, on stderr."""
    for line in render.timing_lines(final):
        typer.echo(line, err=True)


async def load_model(
    settings: Settings, model: str, keep_alive: str | None, status: Any = None
) -> None:
    """Load `model` (an empty request), showing its load progress on `status`."""
    async with make_client(settings) as client, load_progress_shown(client, model, status):
        await client.load(model, keep_alive)


def load_with_spinner(settings: Settings, model: str, keep_alive: str | None) -> None:
    with spinner(f"loading {model}") as status:
        asyncio.run(load_model(settings, model, keep_alive, status))


async def show_model(settings: Settings, model: str) -> ShowResponse:
    async with make_client(settings) as client:
        return await client.show(model)


def is_hub_name(model: str) -> bool:
    """Hugging Face names, which `run` pulls when they are missing."""
    return model.lower().startswith(("hf.co/", "huggingface.co/"))


def call_pulling(settings: Settings, model: str, action: Callable[[], T]) -> T:
    """Run `action`; when it finds a Hugging Face model missing, pull it and run it again
    (Ollama's `run` pulls too; other names exit 4 suggesting `localserve pull`)."""
    try:
        return action()
    except ModelNotFoundAPIError:
        if not is_hub_name(model):
            raise
    asyncio.run(pull_with_progress(settings, model))
    return action()
