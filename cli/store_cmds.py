"""Commands that change the model store: `create`, `cp`, `rm`, `pull`.

When the connection to the daemon drops during one of them, the command reconnects and
says whether the operation finished (see `localserve.cli.recovery`): exit 0 when it did,
3 when it did not.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import TaskID

from localserve.client.http import BadRequestAPIError, DaemonUnreachableError, ModelNotFoundAPIError

# isort: split
from localserve.cli import recovery
from localserve.cli.common import complete_model_name, get_settings, make_client, need_daemon
from localserve.cli.errors import ExitCode, cli_errors, error_message, exit_code_for, fail
from localserve.cli.progress import (
    LARGE_FILE_BYTES,
    byte_progress,
    hash_file,
    pull_with_progress,
)


def create(
    name: Annotated[str, typer.Argument(help="Name of the new model.")],
    file: Annotated[Path, typer.Option("--file", "-f", help="The GGUF file.", dir_okay=False)],
    template: Annotated[
        str | None, typer.Option("--template", help="Chat template (Jinja) override.")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="Default system message.")] = None,
) -> None:
    """Create a model from a local GGUF file (uploaded to the daemon's store)."""
    if not file.is_file():
        fail(f"no such file: {file}", ExitCode.USAGE)
    settings = get_settings()
    need_daemon(settings)
    size = file.stat().st_size
    show_progress = sys.stderr.isatty() and size >= LARGE_FILE_BYTES

    async def upload_and_create(digest: str) -> None:
        async with make_client(settings) as client:
            if await client.has_blob(digest):
                typer.echo(f"using existing blob {digest}", err=True)
            elif show_progress:
                with byte_progress() as progress:
                    task: TaskID = progress.add_task("uploading", total=size)
                    await client.push_blob(file, digest, lambda n: progress.advance(task, n))
            else:
                await client.push_blob(file, digest)
            last = None
            async for item in client.create(
                name, files={file.name: digest}, template=template, system=system
            ):
                status = item.get("status")
                if status and status != last:
                    typer.echo(status, err=True)
                    last = status

    with cli_errors():
        digest = hash_file(file, size, show_progress)
        before = asyncio.run(recovery.versions_before(settings))
        try:
            asyncio.run(upload_and_create(digest))
        except DaemonUnreachableError:
            after = recovery.reconnect(settings, "create", f"whether '{name}' was created")
            recovery.finish("create", recovery.created(name, before, after))


def cp(
    source: Annotated[
        str, typer.Argument(help="Existing model.", autocompletion=complete_model_name)
    ],
    destination: Annotated[str, typer.Argument(help="New name.")],
) -> None:
    """Copy a model under a new name (no bytes are copied)."""
    settings = get_settings()
    need_daemon(settings)

    async def copy() -> None:
        async with make_client(settings) as client:
            await client.copy(source, destination)

    with cli_errors(source):
        try:
            asyncio.run(copy())
        except DaemonUnreachableError:
            after = recovery.reconnect(settings, "cp", f"whether '{destination}' was copied")
            outcome = recovery.copied(source, destination, after)
            if outcome.done:
                typer.echo(f"copied '{source}' to '{destination}'")
            recovery.finish("cp", outcome)
    typer.echo(f"copied '{source}' to '{destination}'")


def rm(
    models: Annotated[
        list[str], typer.Argument(help="Model names.", autocompletion=complete_model_name)
    ],
) -> None:
    """Remove models (their blobs are collected when nothing else uses them)."""
    settings = get_settings()
    need_daemon(settings)
    pending = list(models)  # the first one is in flight
    code = ExitCode.OK

    def worst(new: ExitCode) -> None:
        nonlocal code
        if code == ExitCode.OK:  # the first failure decides the exit code
            code = new

    async def remove_pending() -> None:
        async with make_client(settings) as client:
            while pending:
                name = pending[0]
                try:
                    await client.delete(name)
                except (ModelNotFoundAPIError, BadRequestAPIError) as exc:
                    typer.echo(f"Error: {error_message(exc, None)}", err=True)
                    worst(exit_code_for(exc))
                else:
                    typer.echo(f"deleted '{name}'")
                pending.pop(0)

    with cli_errors():
        while pending:
            try:
                asyncio.run(remove_pending())
            except DaemonUnreachableError:
                name = pending.pop(0)
                after = recovery.reconnect(settings, "rm", f"whether '{name}' was deleted")
                outcome = recovery.deleted(name, after)
                worst(recovery.report("rm", outcome))
                if outcome.done:
                    typer.echo(f"deleted '{name}'")
    raise typer.Exit(int(code))


def pull(
    model: Annotated[str, typer.Argument(help="Model name, e.g. hf.co/org/repo:Q4_K_M.")],
    json_: Annotated[
        bool, typer.Option("--json", help="Print the NDJSON progress stream as is.")
    ] = False,
) -> None:
    """Download a model (progress bars per file; Ctrl-C stops, exit 130)."""
    settings = get_settings()
    need_daemon(settings)

    with cli_errors():
        before = asyncio.run(recovery.versions_before(settings))
        try:
            asyncio.run(pull_with_progress(settings, model, as_json=json_))
        except DaemonUnreachableError:
            after = recovery.reconnect(settings, "pull", f"whether '{model}' was pulled")
            recovery.finish("pull", recovery.pulled(model, before, after))
