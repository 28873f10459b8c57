"""Looking at models and keeping them loaded: `list` (`ls`), `ps`, `show`, `stop`, `pin`,
`unpin`."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from localserve.api.payloads import PsModel, TagsModel
from localserve.client.display import parameters_text, render_show
from localserve.client.http import ClientError
from localserve.config import Settings

# isort: split
from localserve.cli import render
from localserve.cli.chat import show_model
from localserve.cli.common import (
    JsonFlag,
    ModelArgument,
    get_settings,
    make_client,
    need_daemon,
    print_json,
)
from localserve.cli.errors import ExitCode, cli_errors, fail


async def _list(settings: Settings) -> list[TagsModel]:
    async with make_client(settings) as client:
        return await client.list_models()


async def _ps(settings: Settings) -> list[PsModel]:
    async with make_client(settings) as client:
        return await client.ps()


async def _node_state(settings: Settings) -> str | None:
    """The daemon's drain state (/health, issue 15); None when it does not say."""
    async with make_client(settings, timeout=5) as client:
        try:
            state = (await client.health()).get("state")
        except ClientError:
            return None
    return state if isinstance(state, str) else None


def list_cmd(json_: JsonFlag = False) -> None:
    """List the models in the store (NAME, ID, SIZE, MODIFIED)."""
    settings = get_settings()
    need_daemon(settings)
    with cli_errors():
        models = asyncio.run(_list(settings))
    if json_:
        print_json({"models": models})
    else:
        typer.echo(render.format_table(render.LIST_HEADERS, render.list_rows(models)))


def ps(json_: JsonFlag = False) -> None:
    """List the loaded models (NAME, ID, SIZE, PROCESSOR, CONTEXT, UNTIL)."""
    settings = get_settings()
    need_daemon(settings)
    with cli_errors():
        models = asyncio.run(_ps(settings))
    if json_:
        print_json({"models": models})
    else:
        typer.echo(render.format_table(render.PS_HEADERS, render.ps_rows(models)))
        state = asyncio.run(_node_state(settings))
        if state not in (None, "serving"):
            typer.echo(f"the daemon is {state}: it refuses new inference requests", err=True)


def show(
    model: ModelArgument,
    json_: JsonFlag = False,
    modelfile: Annotated[bool, typer.Option("--modelfile", help="Show the Modelfile.")] = False,
    template: Annotated[bool, typer.Option("--template", help="Show the template.")] = False,
    system: Annotated[bool, typer.Option("--system", help="Show the system message.")] = False,
    parameters: Annotated[bool, typer.Option("--parameters", help="Show the parameters.")] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Also the tokenizer arrays (sizes; all with --json)."),
    ] = False,
) -> None:
    """Show a model's details: architecture, parameters, context length, quantization..."""
    if sum((json_, modelfile, template, system, parameters)) > 1:
        fail(
            "only one of --json, --modelfile, --template, --system, --parameters",
            ExitCode.USAGE,
        )
    settings = get_settings()
    need_daemon(settings)
    with cli_errors(model):
        data = asyncio.run(show_model(settings, model, verbose=verbose))
    if json_:
        print_json(data)
    elif modelfile:
        typer.echo(render.modelfile_text(model, data), nl=False)
    elif template:
        typer.echo(data.get("template") or "")
    elif system:
        typer.echo(data.get("system") or "")
    elif parameters:
        typer.echo(parameters_text(data.get("parameters")))
    else:
        typer.echo(render_show(data))


def stop(model: ModelArgument) -> None:
    """Unload a model now."""
    settings = get_settings()
    need_daemon(settings)

    async def unload() -> None:
        async with make_client(settings) as client:
            await client.unload(model)

    with cli_errors(model):
        asyncio.run(unload())


def pin(model: ModelArgument) -> None:
    """Load a model and keep it loaded (evicted last, never expires)."""
    _load_with_keep_alive(model, -1)
    typer.echo(f"pinned {model}")


def unpin(
    model: ModelArgument,
    keepalive: Annotated[
        str, typer.Option("--keepalive", help="Keep-alive from now on, e.g. 5m.")
    ] = "5m",
) -> None:
    """Let a pinned model expire again after its keep-alive."""
    _load_with_keep_alive(model, keepalive)
    typer.echo(f"unpinned {model} (keep-alive {keepalive})")


def _load_with_keep_alive(model: str, keep_alive: str | float) -> None:
    settings = get_settings()
    need_daemon(settings)

    async def load() -> None:
        async with make_client(settings) as client:
            await client.load(model, keep_alive=keep_alive)

    with cli_errors(model):
        asyncio.run(load())
