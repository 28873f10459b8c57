"""What the commands share: settings, reaching (and starting) the daemon, the client,
spinners and JSON output, shell completion of model names, and argument types."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from importlib import metadata
from typing import Annotated, Any

import typer
from rich.console import Console

from localserve.client import background
from localserve.client.http import LocalserveClient
from localserve.config import Settings, load_settings
from localserve.errors import ConfigError

# isort: split
from localserve.cli.errors import ExitCode, cli_errors, fail


def stderr_console() -> Console:
    """A rich console on stderr (progress bars and spinners never mix with answers)."""
    return Console(stderr=True, highlight=False)


def spinner(text: str = "") -> contextlib.AbstractContextManager[Any]:
    """A spinner on stderr, only when stderr is a terminal."""
    if sys.stderr.isatty():
        return stderr_console().status(text, spinner="dots")
    return contextlib.nullcontext()


def get_settings() -> Settings:
    """The settings, or exit 2 with the configuration error."""
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)


def start_daemon_if_needed(settings: Settings, text: str = "starting localserve daemon...") -> None:
    """Make sure the daemon answers, starting it in the background when allowed; raises
    the daemon module's errors (not running, failed to start)."""
    with spinner(text):
        pid = background.ensure_running(settings, autostart=settings.autostart)
    if pid:
        typer.echo(
            f"started localserve daemon (pid {pid}) at {settings.base_url}; "
            f"log: {background.log_path(settings)}",
            err=True,
        )


def need_daemon(settings: Settings) -> None:
    """Make sure the daemon answers, starting it in the background when allowed."""
    with cli_errors():
        start_daemon_if_needed(settings)


def make_client(settings: Settings, timeout: float | None = None) -> LocalserveClient:
    return LocalserveClient(settings.base_url, api_key=settings.api_key, timeout=timeout)


def complete_model_name(incomplete: str) -> list[str]:
    """Shell completion: the installed models whose name starts with `incomplete`. Asks a
    running daemon (briefly); never starts one, and offers nothing when none answers."""

    async def installed() -> list[str]:
        async with make_client(load_settings(), timeout=2.0) as client:
            return [str(m["name"]) for m in await client.list_models()]

    try:
        names = asyncio.run(installed())
    except Exception:  # completion must never fail loudly in the user's shell
        return []
    short = [n.removesuffix(":latest") for n in names]  # "tiny" for "tiny:latest"
    return sorted({n for n in [*names, *short] if n.startswith(incomplete)})


def client_version() -> str:
    try:
        return metadata.version("localserve")
    except metadata.PackageNotFoundError:
        import localserve

        return str(getattr(localserve, "__version__", "unknown"))


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


JsonFlag = Annotated[bool, typer.Option("--json", help="Print the raw JSON response.")]
ModelArgument = Annotated[
    str, typer.Argument(help="Model name.", autocompletion=complete_model_name)
]
