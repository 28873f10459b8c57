"""Talking to a model, shared by `run` and its REPL: stream a chat answer behind a spinner
that shows the daemon's load progress, load a model, and pull a missing Hugging Face
model first."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
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
    client: LocalserveClient, model: str, status: Any, request_tag: str | None = None
) -> AsyncIterator[None]:
    """While the block runs, show the daemon's load progress for `model` on `status` (a
    rich Status, or None when there is no spinner), and the place in the queue of the
    request sent with `request_tag` ("queued (3rd), ~4 s")."""
    if status is None:
        yield
        return
    try:
        wanted: str | None = ModelName.parse(model).display()
    except LocalserveError:
        wanted = None  # the request will say what is wrong with the name

    async def watch() -> None:
        with contextlib.suppress(ClientError):
            async for event in client.events(["load_progress", "loaded", "request_queued"]):
                if event["type"] == "request_queued":
                    if request_tag is not None and event.get("request_tag") == request_tag:
                        status.update(queued_text(event))
                    continue
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


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def queued_text(event: dict[str, Any]) -> str:
    """The spinner's text while a request waits: "queued (3rd), ~4 s"."""
    text = f"queued ({ordinal(int(event.get('position') or 0))})"
    eta = float(event.get("eta_s") or 0.0)
    return f"{text}, ~{max(1, round(eta))} s" if eta > 0 else text


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
            tag = uuid.uuid4().hex if status is not None else None  # to follow its queue place
            await spinning.enter_async_context(load_progress_shown(client, model, status, tag))
            chunks: AsyncIterator[dict[str, Any]] = client.chat(
                model,
                messages,
                options=options or None,
                format=format,
                keep_alive=keep_alive,
                think=think,
                request_tag=tag,
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


async def show_model(settings: Settings, model: str, *, verbose: bool = False) -> ShowResponse:
    async with make_client(settings) as client:
        return await client.show(model, verbose=verbose)


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
