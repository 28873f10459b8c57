"""Running the daemon: `localserve serve` (foreground) and `localserve daemon
start|stop|status` (background, with a pidfile and a log in the state dir)."""

from __future__ import annotations

from typing import Annotated

import typer

from localserve.client import background
from localserve.errors import ConfigError

# isort: split
from localserve.cli.common import JsonFlag, get_settings, print_json, spinner
from localserve.cli.errors import ExitCode, cli_errors, fail

daemon_app = typer.Typer(help="Run the daemon in the background: start, stop, status.")


def serve() -> None:
    """Run the daemon in the foreground (for service managers; Ctrl-C stops it)."""
    settings = get_settings()
    try:
        settings = settings.validate()
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)
    from localserve.api.app import serve as run_server

    with cli_errors():
        code = run_server(settings)
    raise typer.Exit(code)


@daemon_app.command("start")
def daemon_start(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the daemon to answer.")
    ] = background.START_TIMEOUT_S,
) -> None:
    """Start the daemon in the background (pidfile and log in the state dir)."""
    settings = get_settings()
    with cli_errors():
        settings.validate()
        if background.is_answering(settings):
            pid = background.managed_pid(settings)
            where = f" (pid {pid})" if pid else ""
            typer.echo(f"localserve daemon already running at {settings.base_url}{where}")
            return
        with spinner("starting localserve daemon..."):
            pid = background.start_background(settings, timeout=timeout)
    typer.echo(
        f"started localserve daemon (pid {pid}) at {settings.base_url}\n"
        f"log: {background.log_path(settings)}"
    )


@daemon_app.command("stop")
def daemon_stop(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.")
    ] = background.STOP_TIMEOUT_S,
) -> None:
    """Stop the background daemon (SIGTERM, then SIGKILL after the timeout)."""
    settings = get_settings()
    pid = background.managed_pid(settings)
    with cli_errors(), spinner("stopping localserve daemon..."):
        stopped = background.stop(settings, timeout=timeout)
    if stopped:
        typer.echo(f"stopped localserve daemon (pid {pid})")
    else:
        typer.echo("localserve daemon is not running")


@daemon_app.command("status")
def daemon_status(json_: JsonFlag = False) -> None:
    """Show whether the daemon runs and answers; exit 0 when it does, 3 when not."""
    settings = get_settings()
    with cli_errors():
        state = background.status(settings)
    if json_:
        print_json(state.to_dict())
    else:
        if state.answering and state.pid:
            line = f"running (pid {state.pid})"
        elif state.answering:
            line = "running (not started by `localserve daemon start`)"
        elif state.pid:
            line = f"not answering (pid {state.pid} is alive)"
        else:
            line = "not running"
        rows = [
            ("localserve daemon:", line),
            ("address:", state.base_url),
            ("version:", state.version or "-"),
            ("pidfile:", str(state.pidfile) + (" (stale)" if state.stale_pidfile else "")),
            ("log:", str(state.log_path)),
        ]
        for key, value in rows:
            typer.echo(f"{key:<19}{value}")
    raise typer.Exit(int(ExitCode.OK if state.answering else ExitCode.UNREACHABLE))
