"""Byte progress on stderr: hashing and uploading a GGUF, and `/api/pull`'s stream."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from localserve.client.display import short_id
from localserve.client.http import file_digest
from localserve.config import Settings

# isort: split
from localserve.cli.common import make_client, stderr_console

LARGE_FILE_BYTES = 64 * 1024 * 1024  # hash/upload progress bars from this size up


def byte_progress() -> Progress:
    """A progress display on stderr: bar, bytes, speed and time left per task."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=False,
    )


def hash_file(path: Path, size: int, show_progress: bool) -> str:
    """The file's `sha256:` digest, with a progress bar when asked."""
    if not show_progress:
        return file_digest(path)
    with byte_progress() as progress:
        task = progress.add_task("hashing", total=size)
        return file_digest(path, lambda n: progress.advance(task, n))


async def pull_with_progress(settings: Settings, model: str, *, as_json: bool = False) -> None:
    """Stream /api/pull: NDJSON lines as is, or a progress bar per digest and the status
    lines on stderr."""
    async with make_client(settings) as client:
        if as_json:
            async for item in client.pull(model):
                typer.echo(json.dumps(item))
            return
        tasks: dict[str, TaskID] = {}
        last = None
        with byte_progress() as progress:
            async for item in client.pull(model):
                status = str(item.get("status") or "")
                digest = item.get("digest")
                total = int(item.get("total") or 0)
                if digest and total:
                    if digest not in tasks:
                        label = f"pulling {short_id(digest)}"
                        tasks[digest] = progress.add_task(label, total=total)
                    completed = int(item.get("completed") or 0)
                    progress.update(tasks[digest], total=total, completed=completed)
                elif status and status != last:
                    progress.console.print(status, highlight=False)
                    last = status
